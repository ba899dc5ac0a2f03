"""The batch job: images → model → capture → methods → metrics → store, resumable, one batch at a time.

For each batch the runner asks every method what it ``requires``, runs one capture that provides the union
(one forward, and only the backward passes some method needs), hands the same captured tensors to every
method, scores each map under every protocol, and commits the batch's rows as one set of part files.
Work already committed for the same run (same config hash) is skipped, row key by row key (image, method,
explained target, protocol: see :class:`~compute.runner.resume.CommittedKeys`), so a rerun into the same
``--out`` computes exactly the missing rows, neither repeating work nor duplicating rows.

What is explained: by default one target per image (``--target``, top-1 for a classifier), one capture per
batch. With ``explain="present"`` the ``clean`` protocol instead explains every VOC class present in the
image (target: log-sum-exp of the logits of the ImageNet classes mapped to it, see
:mod:`compute.data.classmap`), one row per present class; that needs one capture per distinct target set, i.e.
capture ``r`` explains each image's ``r``-th present class (images with fewer classes sit it out; on a rerun,
the ``r``-th class still missing), plus the top-1 capture when ``report`` is also asked for.
``min_confidence`` drops images whose top-1 probability is not above it before any capture (one
gradient-free forward). ``faithfulness`` adds deletion/insertion curves
(:mod:`compute.metrics.faithfulness`) for every map, i.e. per capture (once per explained class with
``explain="present"``), timed separately in the run manifest (``timings.faithfulness_seconds``).

The steps, one module each, in the order a batch meets them:

- :mod:`~compute.runner.config` — the options, the run id, the checks before any work;
- :mod:`~compute.runner.devices` — ``--device`` and ``--shard`` (torchrun, SLURM arrays);
- :mod:`~compute.runner.inputs` — decoded images and their batches;
- :mod:`~compute.runner.resume` — what is committed and what a batch still owes;
- :mod:`~compute.runner.passes` — the captures a batch needs;
- :mod:`~compute.runner.explain` — capture, methods, faithfulness;
- :mod:`~compute.runner.variants` — the counterfactual variants each explained target still owes;
- :mod:`~compute.runner.rows` — scoring into rows, and the one commit of a batch's rows;
- :mod:`~compute.runner.background` — methods finished on background threads;
- :mod:`~compute.runner.context` — what the batches of a run share, and the time per stage;
- :mod:`~compute.runner.job` — :class:`Job` and :func:`run`, which tie them together.
"""

from compute.runner.config import RunConfig, check_config, versions
from compute.runner.devices import parse_device, parse_shard, resolve_device, slurm_array_shard, sync_device
from compute.runner.inputs import collate
from compute.runner.job import Job, RunSummary, run, write_report

__all__ = ["RunConfig", "RunSummary", "Job", "run", "write_report", "check_config", "versions", "collate",
           "parse_device", "parse_shard", "resolve_device", "slurm_array_shard", "sync_device"]

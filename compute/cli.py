"""The ``vitlens`` command line. Thin: parse options, call one function, print a summary."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from compute import DEFAULT_MODEL

app = typer.Typer(
    name="vitlens",
    help="Why did the Vision Transformer decide that? Explanation maps for timm ViTs, scored against "
         "segmentation masks, stored as Parquet, browsed in a dashboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
stdout = Console()


def _friendly_errors(fn):
    """Turn the project's input errors into one red line and exit code 2 (no traceback)."""

    # DatasetError, MethodError, ModelError and StoreError are ValueErrors: naming them here would import torch
    # (and every model and method) before commands that need neither, such as report
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _check_out(out: Path) -> None:
    """The store folder must be a folder (or not exist yet) that this process can create and write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; give a folder for the store (created if "
                         "missing; reruns resume into it)")
    _check_writable(out, "--out", out)


def _check_file_out(path: Optional[Path], flag: str) -> None:
    """An output file's folder must exist and be writable (checked before the work, not after it)."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'out')!r}")
    if not path.parent.exists():
        raise ValueError(f"{flag} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first")
    _check_writable(path.parent, flag, path)


def _check_writable(folder: Path, flag: str, given: Path) -> None:
    """``folder`` (or, where it does not exist yet, the nearest folder above it, where it will be created) must
    be a writable folder: a file on the way or a read-only folder would otherwise fail after the work."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {str(given)!r}: {str(existing)!r} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(given)!r}: folder {str(existing)!r} is not writable; choose another path "
                         "or fix its permissions")


def _check_faithfulness_baseline(baseline: str) -> None:
    """Checked with or without --faithfulness: a mistyped value should not wait for the day it is used."""
    from compute.metrics.faithfulness import BASELINES

    if baseline not in BASELINES:
        raise ValueError(f"unknown --faithfulness-baseline {baseline!r}; choose one of {', '.join(BASELINES)}")


def _protocols(protocol: str) -> tuple[str, ...]:
    """The comma-separated --protocol value as names; none at all would start a run that scores nothing."""
    from store.schema import PROTOCOLS

    names = tuple(p.strip() for p in protocol.split(",") if p.strip())
    if not names:
        raise ValueError(f"--protocol {protocol!r} names no protocol; choose {', '.join(PROTOCOLS)} "
                         "(comma-separated)")
    return names


@app.command()
@_friendly_errors
def compute(
    voc_root: Path = typer.Option(..., "--voc-root", help="Folder holding VOCdevkit (or VOCdevkit / VOC2012 itself)."),
    out: Path = typer.Option(Path("results"), "--out", help="Store folder (created; reruns resume into it)."),
    split: str = typer.Option("val", help="ImageSets/Segmentation split: train, val or trainval."),
    model: str = typer.Option(DEFAULT_MODEL, help="timm model name (`vitlens models`)."),
    weights: Optional[Path] = typer.Option(None, help="Local checkpoint (.safetensors/.pth) instead of hub weights."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights (tests, offline smoke runs)."),
    img_size: Optional[int] = typer.Option(None, help="Input size in pixels (default: the model's own)."),
    methods: str = typer.Option("all", help="'all' or comma-separated names, options in parentheses: "
                                            "rollout(head_fusion=max). `vitlens methods` lists them."),
    protocol: str = typer.Option("report,clean", help="Scoring protocol(s), comma-separated: report, clean."),
    target: Optional[str] = typer.Option(None, help="What to explain: top1 (default for classifiers), class:<i>, "
                                                    "cls_norm (default for headless backbones) or "
                                                    "cosine:<mean|image|folder|embedding.npy>."),
    batch_size: int = typer.Option(16, min=1, help="Images per forward/backward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:<i>."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N images of the split."),
    workers: Optional[int] = typer.Option(None, min=0, help="DataLoader worker processes (default: cores-1, max 4)."),
    seed: int = typer.Option(0, help="Seed for --random-init."),
    explain: str = typer.Option("top1", help="top1: explain --target under every protocol; present: the clean "
                                             "protocol explains each VOC class present in the image (logsumexp of "
                                             "its ImageNet classes' logits; ImageNet-1k heads only), one row each."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence",
                                                   help="Only images whose top-1 probability is above this "
                                                        "(the source report used 0.85); the rest are skipped."),
    faithfulness: bool = typer.Option(False, "--faithfulness",
                                      help="Also compute deletion/insertion AUCs (2×(steps-1) extra forward "
                                           "passes per image and method; timed in the run manifest)."),
    faithfulness_steps: int = typer.Option(10, min=1, help="Steps of the deletion/insertion curves."),
    faithfulness_baseline: str = typer.Option("zero", help="What removed patches become: zero (the mean "
                                                           "colour) or blur (the Gaussian-blurred image)."),
    precision: str = typer.Option("fp32", help="fp32, or bf16 to capture under bfloat16 autocast (faster on "
                                                "recent GPUs; `vitlens bench --bf16` shows how much maps move)."),
    counterfactuals: bool = typer.Option(True, "--counterfactuals/--no-counterfactuals",
                                         help="Also judge every explained target on counterfactual variants "
                                              "(object alone, context alone, object on another image's "
                                              "background, cue removed): forward passes only, up to 4 per image. "
                                              "`vitlens report --shortcuts` reads them."),
    cf_fill: str = typer.Option("blur", "--cf-fill", help="What replaces removed pixels in the variants: blur "
                                                          "(of the pixels kept), mean (image mean) or gray. A rerun "
                                                          "with another fill adds its rows to the same run."),
    shard: Optional[str] = typer.Option(None, help="i/n: this process explains every n-th image from the i-th "
                                                   "(0-based) into the same run; default: torchrun's RANK/WORLD_SIZE "
                                                   "or a SLURM array's task id/count when set."),
    backend: str = typer.Option("local", "--backend", help="local: this process (DataLoader workers decode); "
                                                          "ray: a pool of Ray actors, one model each "
                                                          "(pip install 'vitlens\\[ray]'; see docs/scaling.md)."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1,
                                              help="Ray actors (default: one per GPU of the cluster, else 2)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="Ray cluster to use (auto, host:port, ray://host:10001); "
                                                   "default: a local Ray instance for this run."),
):
    """Explain every image of a VOC split with every requested method and write the scores to a store."""
    from compute.methods import check_methods_for_model, parse_methods
    from compute.models import probe_architecture
    from compute.runner import RunConfig, parse_device, resolve_device, run

    backend = backend.strip().lower()
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown --backend {backend!r}; choose local or ray")
    device = parse_device(device)
    if backend == "local":  # Ray actors may run on other machines: they resolve it there
        resolve_device(device)
    _check_out(out)
    if backend == "local" and ray_workers is not None:
        raise ValueError("--ray-workers applies to --backend ray")
    protocols = _protocols(protocol)
    _check_faithfulness_baseline(faithfulness_baseline.strip())
    probe = probe_architecture(model)  # the architecture alone, on the meta device: no weights, no download
    if probe is not None:  # method options against the model's blocks, before any image is processed
        check_methods_for_model(parse_methods(methods), probe)

    config = RunConfig(out=str(out), voc_root=str(voc_root), split=split, model=model,
                       weights=str(weights) if weights else None, random_init=random_init, img_size=img_size,
                       methods=methods, protocols=protocols,
                       target=target, batch_size=batch_size, device=device, limit=limit, seed=seed,
                       num_workers=workers, explain=explain.strip(), min_confidence=min_confidence,
                       faithfulness=faithfulness, faithfulness_steps=faithfulness_steps,
                       faithfulness_baseline=faithfulness_baseline.strip(), shard=shard,
                       precision=precision.strip(), counterfactuals=counterfactuals, cf_fill=cf_fill.strip())
    with Progress(TextColumn("[bold]explaining"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task("images", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            if backend == "ray":
                from compute.distributed import run_ray

                summary = run_ray(config, num_workers=ray_workers, address=ray_address, progress=progress)
            else:
                summary = run(config, progress=progress)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: every committed batch is kept; run the same command again to "
                          "continue where this one stopped", highlight=False)
            raise typer.Exit(code=130) from None
    stdout.print(summary.line())


@app.command("methods")
def list_methods():
    """List every explanation method with what it needs and a one-line description."""
    from compute.methods import PREFIX_FACTORIES, REGISTRY

    table = Table(title="vitlens methods", show_lines=False)
    for col in ("name", "class-specific", "resolution", "needs", "description"):
        table.add_column(col, overflow="fold")
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        opts = ", ".join(f"{k}={v}" for k, v in cls.defaults.items())
        table.add_row(name + (f"\n({opts})" if opts else ""), "yes" if cls.class_specific else "no",
                      cls.resolution, ", ".join(sorted(cls.requires)), cls.summary)
    for prefix, factory in sorted(PREFIX_FACTORIES.items()):
        table.add_row(f"{prefix}:<a>*<b>", "-", "-", "-", (factory.__doc__ or "").strip().splitlines()[0])
    stdout.print(table)


@app.command("models")
def list_models(pattern: str = typer.Argument("*", help="Glob over timm names, e.g. 'deit*' or '*dinov2*'.")):
    """List the timm model names vitlens can explain (plain ViT blocks with a class token)."""
    from compute.models import list_supported_models

    names = list_supported_models(pattern)
    for n in names:
        stdout.print(n, highlight=False)
    console.print(f"{len(names)} models")


@app.command("download-voc")
@_friendly_errors
def download_voc_cmd(
    to: Path = typer.Option(Path("data/voc"), "--to", help="Folder to hold VOCdevkit/VOC2012."),
    keep_archive: bool = typer.Option(False, help="Keep the 2 GB tar after extracting."),
    url: Optional[str] = typer.Option(None, "--url", envvar="VITLENS_VOC_URL",
                                      help="Archive URL, for mirrors and testing (default: the official one)."),
    md5: Optional[str] = typer.Option(None, "--md5", envvar="VITLENS_VOC_MD5",
                                      help="Expected MD5 of the archive at --url, for mirrors and testing "
                                           "(default: the official archive's)."),
):
    """Download Pascal VOC 2012 trainval (official archive, MD5-verified) and extract it (needs internet).
    An interrupted download continues where it stopped when the command is run again."""
    from compute.data.voc import VOC2012_MD5, VOC2012_URL, download_voc

    with Progress(TextColumn("[bold]downloading"), BarColumn(), TextColumn("{task.fields[mb]}"),
                  console=console) as bar:
        task = bar.add_task("voc", total=None, mb="")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None, mb=f"{done / 1e6:.0f} MB")

        root = download_voc(to, url=url or VOC2012_URL, md5=(md5 or VOC2012_MD5).strip().lower(),
                            keep_archive=keep_archive, progress=progress)
    stdout.print(f"VOC 2012 ready at {root}; use --voc-root {to}")


@app.command()
@_friendly_errors
def bench(
    model: str = typer.Option("vit_base_patch16_224", help="timm model name (random weights: speed only)."),
    methods: str = typer.Option("all", help="'all' or comma-separated method specs."),
    batch_size: int = typer.Option(8, min=1, help="Images per pass."),
    batches: int = typer.Option(2, min=1, help="Batches per timed repetition."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:<i>."),
    img_size: Optional[int] = typer.Option(None, help="Input size (default: the model's own)."),
    repeat: int = typer.Option(3, min=1, help="Timed repetitions (best is reported)."),
    baseline_images: int = typer.Option(2, min=1, help="Images for the per-image, per-method baseline."),
    bf16: bool = typer.Option(False, "--bf16", help="Also report how bf16 autocast changes the maps."),
    end_to_end: int = typer.Option(0, "--end-to-end", min=0,
                                   help="Also run the whole batch job (decode, explain, score, store) on this many "
                                        "random VOC-sized images and report its img/s and time per stage "
                                        "(1449 = VOC 2012 val)."),
    end_to_end_batch_size: Optional[int] = typer.Option(None, "--end-to-end-batch-size", min=1,
                                                        help="Batch size of that run (default: --batch-size)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="DataLoader worker processes of that run (default: up to 4)."),
    table: bool = typer.Option(True, "--table/--no-table", help="Measure the per-method table (--no-table: "
                                                                 "only the end-to-end run)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure to this JSON file."),
):
    """Print img/s of every method beside the forward and forward+backward rooflines, and the shared-capture
    speed-up over a per-image, one-method-per-pass baseline; optionally time the whole batch job."""
    import json
    import platform

    import torch

    from compute.bench import bf16_effect, run_bench
    from compute.bench import end_to_end as end_to_end_run
    from compute.methods import parse_methods
    from compute.models import load_model
    from compute.runner import resolve_device

    dev = resolve_device(device)
    _check_file_out(json_out, "--json")
    chosen = parse_methods(methods)
    if not table and not end_to_end:
        raise ValueError("nothing to measure: --no-table needs --end-to-end N")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    figures: dict = {"model": model, "device": name, "batch_size": batch_size, "methods": [m.key for m in chosen],
                     "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "host": platform.node()}
    console.print(f"{model} fp32 · batch {batch_size} · {name} · {len(chosen)} methods")
    if table:
        loaded = load_model(model, random_init=True, img_size=img_size, device=dev)
        with console.status("measuring") as status:
            rows, facts = run_bench(loaded.model, loaded.input_size, chosen, batch_size, dev, batches=batches,
                                    repeat=repeat, baseline_images=baseline_images,
                                    progress=lambda label: status.update(f"measuring {label}"))
        out = Table(title=f"vitlens bench — {model}, batch {batch_size}, {name}")
        out.add_column("what")
        out.add_column("img/s", justify="right")
        out.add_column("note")
        for r in rows:
            out.add_row(r.name, f"{r.images_per_second:,.2f}", r.note)
        stdout.print(out)
        extra = ", ".join(f"{k}={v:,.1f}" for k, v in facts.items())
        stdout.print(f"shared capture vs per-image baseline: {facts['speedup_shared_vs_baseline']:.1f}x; {extra}")
        figures["table"] = [{"what": r.name, "images_per_second": r.images_per_second, "note": r.note} for r in rows]
        figures["facts"] = facts
        if bf16:
            t = Table(title="bf16 autocast vs fp32 maps")
            for col in ("method", "mean correlation", "mean Otsu-mask IoU"):
                t.add_column(col)
            effect = bf16_effect(loaded.model, loaded.input_size, chosen, batch_size, dev)
            for key, corr, iou in effect:
                t.add_row(key, f"{corr:.4f}", f"{iou:.4f}")
            stdout.print(t)
            figures["bf16"] = [{"method": k, "correlation": c, "otsu_iou": i} for k, c, i in effect]
        del loaded
    if end_to_end:
        bs = end_to_end_batch_size or batch_size
        with Progress(TextColumn("[bold]end to end"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("images", total=end_to_end)
            summary, prepared = end_to_end_run(model, methods, end_to_end, bs, device, workers=workers,
                                               img_size=img_size,
                                               progress=lambda done, total: bar.update(task, completed=done))
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary.stages.items())
        stdout.print(f"end to end: {summary.images} images × {len(summary.methods)} methods in "
                     f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} img/s, batch {bs}, model loading "
                     f"included; writing the images took {prepared:.1f} s more); {summary.rows} metric rows; "
                     f"{summary.skipped} skipped\nstages: {stages}")
        figures["end_to_end"] = {"images": summary.images, "seconds": summary.seconds, "batch_size": bs,
                                 "images_per_second": summary.images_per_second, "rows": summary.rows,
                                 "skipped": summary.skipped, "stages": summary.stages}
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2))
        console.print(f"figures written to {json_out}")


@app.command("report")
@_friendly_errors
def report_cmd(
    store: Path = typer.Option(..., "--store", help="Store folder written by `vitlens compute`."),
    protocol: Optional[str] = typer.Option(None, help="Only this protocol (report or clean); default: each, "
                                                      "as separate rows."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence",
                                                   help="Only images whose top-1 probability is above this "
                                                        "(the source report: 0.85)."),
    run_id: Optional[str] = typer.Option(None, "--run", help="Only this run id (default: every run in the store)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table (unrounded) as CSV."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the table as Markdown."),
    resamples: int = typer.Option(1000, min=1, help="Bootstrap resamples (over images) for the 95 % intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    shortcuts: bool = typer.Option(False, "--shortcuts",
                                   help="Instead: does the model rely on context (counterfactual variants: "
                                        "context-driven share per class, BG-Gap), and which methods' maps show "
                                        "it (method trust; cue trust on stores with planted cues)."),
    cf_fill: Optional[str] = typer.Option(None, "--cf-fill", help="With --shortcuts: only the variants of this "
                                                                  "fill (default: each fill the run holds)."),
):
    """The source report's Table 1 per method (IoU, F1, pixel accuracy ×100 with 95 % bootstrap intervals),
    with the images behind each row and the other metric families as extra columns; with --shortcuts, the
    shortcut tables instead."""
    from compute.report import build_report
    from store.query import StoreError, has_results
    from store.schema import PROTOCOLS, check_min_confidence  # not compute.metrics: that would import torch

    protocol = protocol.strip() if protocol is not None else None
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {protocol!r}; choose {' or '.join(PROTOCOLS)} (or leave it out for "
                         "every protocol)")
    check_min_confidence(min_confidence)
    _check_file_out(csv, "--csv")
    _check_file_out(markdown, "--markdown")
    if not has_results(store):
        if any(Path(store).glob("skips/run_id=*/part-*.parquet")):
            raise StoreError(f"no scored rows in {str(store)!r}: every image or method was skipped; the skips "
                             "table says why (vitlens dashboard, or store.query.connect(...).sql('FROM skips'))")
        raise StoreError(f"no results in {str(store)!r}; fill it with: vitlens compute --voc-root <VOC folder> "
                         f"--out {store}")
    if shortcuts:
        if min_confidence is not None:
            raise ValueError("--min-confidence does not apply to --shortcuts: its verdicts take the confident "
                             "decisions (top-1 probability >= 0.5) and its correlations every decision")
        _print_shortcuts(store, protocol, run_id, cf_fill.strip() if cf_fill else None, resamples, seed, csv,
                         markdown)
        return
    elif cf_fill is not None:
        raise ValueError("--cf-fill applies to --shortcuts")
    rep = build_report(store, protocol=protocol, min_confidence=min_confidence, run_id=run_id,
                       resamples=resamples, seed=seed)
    _warn_damaged(rep.problems)
    if rep.table.empty:
        given = [f"{flag} {value}" for flag, value in (("--protocol", protocol), ("--min-confidence", min_confidence),
                                                       ("--run", run_id)) if value is not None]
        if given:
            raise ValueError(f"no rows match {', '.join(given)}; without a filter the report covers every "
                             f"run and protocol in the store")
        raise ValueError(f"the metrics in {str(store)!r} hold no scored rows (every image skipped, or the run was "
                         f"interrupted before its first batch); see the skips table, or rerun: vitlens compute "
                         f"--voc-root <VOC folder> --out {store}")
    out = stdout if stdout.is_terminal else Console(width=160)  # a file or pipe gets the whole table
    main_cols = [c for c in rep.columns if c in ("iou", "f1", "pixel_accuracy")]
    extra_cols = [c for c in rep.columns if c not in main_cols]
    for title, cols, drop in (("Table 1 — localisation (Otsu), ×100, mean [95 % CI]", main_cols, "Rows"),
                              ("Other metrics, ×100", extra_cols, "Images")):
        if not cols:
            continue
        df = rep.formatted(cols, sep="\n", short=True).drop(columns=[drop])
        table = Table(title=title, caption=rep.caption() if cols is main_cols else None, show_lines=True)
        for col in df.columns:
            text = col in ("Method", "Protocol", "Model", "Run")
            table.add_column(col, justify="left" if text else "right", no_wrap=not text)
        for row in df.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        out.print(table)
    _write_tables(rep, csv, markdown)


def _warn_damaged(problems: list[str]) -> None:
    """One warning per damaged part the store's reader left out, and what to do about it."""
    for problem in problems:
        console.print(f"[bold yellow]warning:[/] left out, damaged: {problem}", highlight=False, soft_wrap=True)
    if problems:
        console.print("[yellow]the figures below leave those batches out; rerun the same `vitlens compute` "
                      "command to recompute exactly them[/]", highlight=False)


def _write_tables(rep, csv: Optional[Path], markdown: Optional[Path]) -> None:
    """A report's ``--csv`` and ``--markdown`` files (any object with ``to_csv`` and ``to_markdown``)."""
    if csv:
        rep.to_csv(csv)
        console.print(f"wrote {csv}")
    if markdown:
        Path(markdown).write_text(rep.to_markdown())
        console.print(f"wrote {markdown}")


def _print_shortcuts(store: Path, protocol: Optional[str], run_id: Optional[str], fill: Optional[str], resamples: int,
                     seed: int, csv: Optional[Path], markdown: Optional[Path]) -> None:
    """``vitlens report --shortcuts``: the tables of :func:`compute.report.build_shortcuts`, per run and fill."""
    from compute.report import SHORTCUT_TABLES, SHORTCUT_TITLES, build_shortcuts

    rep = build_shortcuts(store, protocol=protocol, run_id=run_id, fill=fill, resamples=resamples, seed=seed)
    _warn_damaged(rep.problems)
    if not rep.sections:
        given = ", ".join(f"{flag} {v}" for flag, v in (("--run", run_id), ("--cf-fill", fill)) if v is not None)
        raise ValueError(f"no counterfactual rows in {str(store)!r}" + (f" for {given}" if given else "")
                         + "; they are made by `vitlens compute` unless --no-counterfactuals (a rerun of the same "
                           "command adds them to a store made without them)")
    out = stdout if stdout.is_terminal else Console(width=160)
    for sec in rep.sections:
        out.print(f"[bold]{sec.title}[/]", highlight=False)
        for name in SHORTCUT_TABLES:
            df = rep.formatted(sec, name)
            if df.empty:
                if name != "cue_trust":  # no cue masks: nothing to say
                    out.print(f"{SHORTCUT_TITLES[name]}: no decisions to count", highlight=False)
                continue
            table = Table(title=SHORTCUT_TITLES[name], caption=f"95 % bootstrap ({resamples} resamples, seed {seed})")
            for col in df.columns:
                table.add_column(col, justify="left" if col in ("Class", "Method", "Protocol") else "right")
            for row in df.itertuples(index=False):
                table.add_row(*(str(v) for v in row))
            out.print(table)
    _write_tables(rep, csv, markdown)


@app.command("dashboard")
@_friendly_errors
def dashboard_cmd(
    store: Path = typer.Option(Path("results"), "--store", help="Store folder written by `vitlens compute`."),
    port: int = typer.Option(8501, "--port", help="Port to serve on."),
    host: str = typer.Option("localhost", "--host", help="Address to bind (0.0.0.0: every interface)."),
    headless: bool = typer.Option(False, "--headless", help="Do not open a browser window."),
):
    """Browse a store in the browser: leaderboard, distributions, failure cases, heatmap grid, image detail."""
    from dashboard.launch import serve

    raise typer.Exit(code=serve(store, port=port, host=host, headless=headless))


@app.command("demo")
@_friendly_errors
def demo_cmd(
    out: Path = typer.Option(Path("results/demo"), "--out", help="Folder for the generated data, model and store."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Only build the store; print its path."),
    small: bool = typer.Option(False, "--small", help="Explain 24 evaluation images per group instead of 100 "
                                                        "(the same data and model; smoke test)."),
    port: int = typer.Option(8501, "--port", help="Dashboard port."),
):
    """Offline demo: synthetic images with a planted cue, a small ViT trained on them, every method, dashboard."""
    from compute.demo import cue_summary, run_demo
    from dashboard.launch import check_port

    if not no_dashboard:
        check_port(port)
    _check_out(out)

    result = run_demo(out, small=small, log=lambda msg: console.print(msg, highlight=False))
    stdout.print(result.summary_line, highlight=False)
    table = Table(title="conflict images the model classified by their cue: median cue-mass ratio per method")
    for col in ("method", "images", "cue ratio", "object ratio", "cue IoU", "object IoU"):
        table.add_column(col)
    for r in cue_summary(result.store).itertuples():
        table.add_row(r.method, str(r.images), f"{r.cue_ratio:.1f}×", f"{r.object_ratio:.2f}×", f"{r.cue_iou:.2f}",
                      f"{r.object_iou:.2f}")
    stdout.print(table)
    _print_shortcuts(result.store, None, None, None, 1000, 0, None, None)
    stdout.print(f"store: {result.store.resolve()}  ({result.seconds['total']:.0f} s)", highlight=False)
    p = result.prepared
    stdout.print(f"model: {p.weights} (explain other images with: vitlens compute --model {p.config.train.model} "
                 f"--img-size {p.config.train.img_size} --weights {p.weights} --voc-root {p.data_root})", highlight=False)
    if no_dashboard:
        stdout.print(f"browse it with: vitlens dashboard --store {result.store}", highlight=False)
        return
    from dashboard.launch import serve

    stdout.print(f"dashboard: http://localhost:{port}  (Ctrl+C stops it)", highlight=False)
    raise typer.Exit(code=serve(result.store, port=port, headless=True))


def main() -> None:  # console-script entry point
    app(prog_name="vitlens")


if __name__ == "__main__":
    sys.exit(main())

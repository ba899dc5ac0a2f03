"""The counterfactual variants in the batch job (compute.runner.variants), through real runs on voc-mini: made by
default and committed with their batch, resumed by key (a store without them gets exactly the missing ones, no
row twice), independent of shards and ``--limit``, one set of rows per fill, off with ``--no-counterfactuals``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from compute.cli import app
from compute.runner import RunConfig, run
from store.query import connect

# a variant row, its float scores rounded: the variants of one image go through the model in batches of
# other sizes in a shard or a resumed run
ROW = ("image_id, protocol, variant, fill, target_class, target_kind, gt_target, round(region_area, 5), "
       "score_kind, round(orig_score, 5), orig_pred_class, round(score, 5), pred_class, pred_voc, same_top1, "
       "partner_id, partner_classes, reason")


def _config(voc_mini, out, **kw):
    return RunConfig(**{**dict(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                               img_size=112, methods="raw_attention", batch_size=4, num_workers=0, device="cpu"),
                        **kw})


def _variants(out) -> list[tuple]:
    return connect(out).execute(f"SELECT {ROW} FROM counterfactuals ORDER BY ALL").fetchall()


def _metrics(out) -> list[tuple]:
    return connect(out).execute("SELECT image_id, method, protocol, target_class, iou, relevance_mass "
                                "FROM metrics ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def reference(voc_mini, tmp_path_factory):
    """One uninterrupted run over the whole split, variants on."""
    out = tmp_path_factory.mktemp("reference")
    run(_config(voc_mini, out))
    return out


def test_every_explained_target_and_protocol_gets_its_variants(reference):
    con = connect(reference)
    keys = con.execute("SELECT DISTINCT image_id, target_class, protocol FROM metrics ORDER BY ALL").fetchall()
    per_key = con.execute("SELECT image_id, target_class, protocol, list(variant ORDER BY variant), "
                          "count(DISTINCT fill) FROM counterfactuals GROUP BY ALL ORDER BY ALL").fetchall()
    assert [k[:3] for k in per_key] == keys and len(keys) == 20
    assert {tuple(k[3]) for k in per_key} == {("mixed_rand", "no_fg", "only_fg")}  # VOC has no cue masks
    assert {k[4] for k in per_key} == {1}
    # a variant is either made (a score, a top-1) or says why not; partners are other images of the split
    bad = con.execute("SELECT count(*) FROM counterfactuals WHERE (score IS NULL) = (reason IS NULL) "
                      "OR partner_id = image_id").fetchone()[0]
    assert bad == 0
    ids = {r[0] for r in con.execute("SELECT image_id FROM images").fetchall()}
    partners = {r[0] for r in con.execute("SELECT partner_id FROM counterfactuals WHERE partner_id IS NOT NULL")
                .fetchall()}
    assert partners and partners <= ids
    # the original score is the metrics row's decision: the top-1 is the explained class under report
    mismatched = con.execute("""SELECT count(*) FROM counterfactuals c JOIN metrics m USING (run_id, image_id, protocol)
                                WHERE m.method = 'raw_attention' AND c.protocol = 'report'
                                AND (c.orig_pred_class != m.pred_class OR abs(c.orig_score - m.confidence) > 1e-5)
                             """).fetchone()[0]
    assert mismatched == 0


def test_a_store_without_variants_gets_exactly_the_missing_ones(voc_mini, reference, tmp_path):
    """A store written without variants (as one made before the table existed): the rerun adds every variant
    row, recomputes no metric row, and a third run has nothing left."""
    first = run(_config(voc_mini, tmp_path, counterfactuals=False))
    assert first.rows == 20 and _variants(tmp_path) == []
    metrics = _metrics(tmp_path)

    second = run(_config(voc_mini, tmp_path))
    assert second.rows == 0 and second.images == 10  # every image explained again: by its variants only
    assert _metrics(tmp_path) == metrics
    assert _variants(tmp_path) == _variants(reference)

    third = run(_config(voc_mini, tmp_path))
    assert (third.images, third.already_done) == (0, 10)
    assert len(_variants(tmp_path)) == len(_variants(reference))


def test_a_limited_run_then_the_whole_split_equals_one_run(voc_mini, reference, tmp_path):
    """Partners come from the whole split, so the variants of the first images do not depend on --limit; the
    rest are added by the rerun, none twice."""
    run(_config(voc_mini, tmp_path, limit=3, batch_size=2))
    got = _variants(tmp_path)
    assert set(got) <= set(_variants(reference)) and len({r[0] for r in got}) == 3
    run(_config(voc_mini, tmp_path))
    assert _variants(tmp_path) == _variants(reference)


def test_union_of_shards_equals_a_single_run(voc_mini, reference, tmp_path):
    for i in range(3):
        run(_config(voc_mini, tmp_path, shard=f"{i}/3", batch_size=3))
    assert _variants(tmp_path) == _variants(reference)


def test_another_fill_adds_its_own_rows_to_the_same_run(voc_mini, reference, tmp_path):
    run(_config(voc_mini, tmp_path, limit=4))
    again = run(_config(voc_mini, tmp_path, limit=4, cf_fill="gray"))
    assert again.rows == 0  # same run id: no metric row again
    con = connect(tmp_path)
    counts = dict(con.execute("SELECT fill, count(*) FROM counterfactuals GROUP BY fill").fetchall())
    assert counts == {"blur": 24, "gray": 24}
    assert con.execute("SELECT count(DISTINCT run_id) FROM counterfactuals").fetchone()[0] == 1
    # the fills change the variants' pixels, so their scores differ somewhere
    differ = con.execute("""SELECT count(*) FROM counterfactuals b JOIN counterfactuals g
                            USING (image_id, target_class, protocol, variant)
                            WHERE b.fill = 'blur' AND g.fill = 'gray' AND b.score != g.score""").fetchone()[0]
    assert differ > 0


def test_cli_flags_turn_variants_off_and_choose_the_fill(voc_mini, tmp_path):
    base = ["compute", "--voc-root", str(voc_mini), "--random-init", "--model", "vit_tiny_patch16_224",
            "--img-size", "112", "--methods", "raw_attention", "--limit", "2", "--workers", "0"]
    cli = CliRunner()
    res = cli.invoke(app, base + ["--out", str(tmp_path / "off"), "--no-counterfactuals"])
    assert res.exit_code == 0, res.output
    assert connect(tmp_path / "off").execute("SELECT count(*) FROM counterfactuals").fetchone()[0] == 0
    res = cli.invoke(app, base + ["--out", str(tmp_path / "mean"), "--cf-fill", "mean"])
    assert res.exit_code == 0, res.output
    assert connect(tmp_path / "mean").execute("SELECT DISTINCT fill FROM counterfactuals").fetchall() == [("mean",)]
    res = cli.invoke(app, base + ["--out", str(tmp_path / "bad"), "--cf-fill", "noise"])
    assert res.exit_code == 2 and "unknown --cf-fill 'noise'" in " ".join(res.output.split())
    assert not (tmp_path / "bad").exists()


def test_the_variants_stage_is_timed(reference):
    import json

    (manifest,) = reference.glob("runs/*.json")
    stages = json.loads(manifest.read_text())["timings"]["stages"]
    assert stages["counterfactuals"] > 0


@pytest.mark.slow
def test_a_headless_model_records_target_values(voc_mini, tmp_path):
    run(_config(voc_mini, tmp_path, model="vit_small_patch14_reg4_dinov2", img_size=70, limit=3))
    rows = connect(tmp_path).execute("SELECT DISTINCT score_kind, pred_class IS NULL, same_top1 IS NULL, "
                                     "orig_pred_class IS NULL FROM counterfactuals WHERE reason IS NULL").fetchall()
    assert rows == [("value", True, True, True)]
    assert connect(tmp_path).execute("SELECT count(score) FROM counterfactuals").fetchone()[0] > 0


def test_bench_reports_the_variants_beside_the_forward_roofline():
    import torch

    from compute.bench import run_bench
    from compute.methods import parse_methods
    from compute.models import load_model

    loaded = load_model("vit_tiny_patch16_224", random_init=True, img_size=64)
    rows, _ = run_bench(loaded.model, loaded.input_size, parse_methods("raw_attention"), 2, torch.device("cpu"),
                        batches=1, repeat=1, baseline_images=1)
    by_name = {r.name: r for r in rows}
    variants, forward = by_name["counterfactual variants (blur)"], by_name["forward"]
    assert variants.images_per_second > 0
    share = round(100 * variants.images_per_second * 3 / forward.images_per_second)
    assert variants.note == f"3 forwards per image: {share}% of fwd"

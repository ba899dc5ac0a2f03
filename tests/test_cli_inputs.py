"""`vitlens compute` on data that cannot give a run: exit code 2, one message naming the problem, no traceback
(these fail before any model is built, so they are quick)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from compute.cli import app

cli = CliRunner()


def _tree(voc_mini, tmp_path, listed: str):
    src = voc_mini / "VOCdevkit" / "VOC2012"
    dst = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    shutil.copytree(src / "JPEGImages", dst / "JPEGImages")
    shutil.copytree(src / "SegmentationClass", dst / "SegmentationClass")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    (dst / "ImageSets" / "Segmentation" / "val.txt").write_text(listed)
    return tmp_path / "voc"


@pytest.mark.parametrize("listed,expected", [
    ("", "lists no image ids"),
    ("2099_000001\n2099_000002\n", "none of the 2 image(s) listed in"),
])
def test_a_split_that_cannot_give_images_exits_2(voc_mini, tmp_path, listed, expected):
    # before: exit 0 and "0 images × 1 methods ..." as if the run had worked
    root = _tree(voc_mini, tmp_path, listed)
    result = cli.invoke(app, ["compute", "--voc-root", str(root), "--out", str(tmp_path / "store"),
                              "--random-init", "--model", "vit_tiny_patch16_224", "--methods", "rollout",
                              "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert expected in text and "--voc-root" in text
    assert "Traceback" not in result.output


def _compute(voc_mini, out, *extra):
    return cli.invoke(app, ["compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init",
                            "--model", "vit_tiny_patch16_224", "--methods", "rollout", "--workers", "0",
                            "--limit", "1", *extra])


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_an_unknown_device_exits_2_naming_the_choices(voc_mini, tmp_path, device):
    # before: torch.device(...)'s RuntimeError as a traceback, exit 1
    result = _compute(voc_mini, tmp_path / "store", "--device", device)
    assert result.exit_code == 2, result.output
    assert f"unknown --device '{device}'; choose auto, cpu, cuda or cuda:<i>" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_an_unknown_device_is_refused_by_bench_too():
    result = cli.invoke(app, ["bench", "--model", "vit_tiny_patch16_224", "--device", "tpu"])
    assert result.exit_code == 2, result.output
    assert "unknown --device 'tpu'" in result.output


def test_a_device_this_machine_lacks_exits_2(voc_mini, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # before: accepted here, then torch failed on cuda:3 inside the run (a traceback)
    result = _compute(voc_mini, tmp_path / "store", "--device", "cuda:3")
    assert result.exit_code == 2, result.output
    assert "only 1 CUDA device(s) are visible" in " ".join(result.output.split())


def test_out_naming_a_file_exits_2(voc_mini, tmp_path):
    # before: NotADirectoryError from mkdir as a traceback, exit 1, after the model was loaded
    out = tmp_path / "results.parquet"
    out.write_text("")
    result = _compute(voc_mini, out, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in " ".join(result.output.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,expected", [
    (["--protocol", "nonsense"], "unknown --protocol 'nonsense'; choose report or clean"),
    (["--min-confidence", "2"], "--min-confidence 2.0 must lie in [0, 1)"),
    (["--csv", "{tmp}/absent/t.csv"], "does not exist; create it first"),
    (["--markdown", "{tmp}"], "is a folder; give a file name"),
])
def test_report_options_are_checked_before_the_store(tmp_path, args, expected):
    # before: --protocol/--min-confidence typos read as "no rows match" (or "no results"), and --csv into a missing
    # folder was pandas' OSError as a traceback after the whole bootstrap
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli.invoke(app, ["report", "--store", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_report_starts_without_torch(tmp_path):
    """`vitlens report` reads Parquet through DuckDB; it must not pay for importing torch, models and methods
    (about 2 s), neither for its checks nor for its error handling."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from compute.cli import app; "
            f"r = CliRunner().invoke(app, ['report', '--store', {str(tmp_path)!r}, '--protocol', 'nonsense']); "
            "assert r.exit_code == 2, r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr

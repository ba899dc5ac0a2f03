"""Bad input answered with one message naming the problem (exit code 2 from the command line, a skip with its
reason for one image), never a traceback, a wrong file or a silently different run."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from compute.cli import app
from compute.data.voc import DatasetError, SampleError, VOCSegmentation

cli = CliRunner()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = "root may read and write whatever the mode bits say, so chmod cannot make the file unusable for it"


def _voc(voc_mini, tmp_path, listed: str | bytes, ids=("2012_s00000",)):
    """A VOC tree in tmp_path/voc with some voc-mini images (as ``ids``) and ``listed`` as val.txt."""
    src = voc_mini / "VOCdevkit" / "VOC2012"
    dst = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dst / sub).mkdir(parents=True)
    real = sorted(p.stem for p in (src / "JPEGImages").glob("*.jpg"))
    for new, old in zip(ids, real):
        shutil.copy(src / "JPEGImages" / f"{old}.jpg", dst / "JPEGImages" / f"{new}.jpg")
        shutil.copy(src / "SegmentationClass" / f"{old}.png", dst / "SegmentationClass" / f"{new}.png")
    val = dst / "ImageSets" / "Segmentation" / "val.txt"
    val.write_bytes(listed if isinstance(listed, bytes) else listed.encode())
    return tmp_path / "voc", dst, real[: len(ids)]


def _compute(root, out, *extra):
    return cli.invoke(app, ["compute", "--voc-root", str(root), "--out", str(out), "--random-init",
                            "--model", "vit_tiny_patch16_224", "--methods", "rollout", "--device", "cpu",
                            "--workers", "0", "--limit", "1", *extra])


def _one_line_exit_2(result, *expected):
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for part in expected:
        assert part in text, text
    assert "Traceback" not in result.output
    return text


# ----------------------------------------------------------------------------------------------- split lists
def test_an_id_that_is_a_path_reads_nothing_outside_the_voc_folder(voc_mini, tmp_path):
    root, dst, _ = _voc(voc_mini, tmp_path, "2012_s00000\n../../../outside/secret\n")
    outside = tmp_path / "voc" / "outside"  # JPEGImages/../../../outside = tmp_path/voc/outside
    outside.mkdir()
    shutil.copy(dst / "JPEGImages" / "2012_s00000.jpg", outside / "secret.jpg")
    shutil.copy(dst / "SegmentationClass" / "2012_s00000.png", outside / "secret.png")
    data = VOCSegmentation(root, "val")
    assert data[0].image_id == "2012_s00000"
    with pytest.raises(SampleError, match=r"'\.\./\.\./\.\./outside/secret' is a path, not a file name"):
        data[1]

    # a run records it as a skip with that reason and explains the listed image
    result = _compute(root, tmp_path / "store", "--limit", "2")
    assert result.exit_code == 0, result.output
    skips = pd.read_parquet(next((tmp_path / "store" / "skips").rglob("*.parquet")))
    assert skips.image_id.tolist() == ["../../../outside/secret"]
    assert "is a path, not a file name" in skips.reason.iloc[0]


def test_an_id_with_a_space_is_the_whole_line(voc_mini, tmp_path):
    root, _, _ = _voc(voc_mini, tmp_path, "with space\n", ids=("with space",))
    data = VOCSegmentation(root, "val")
    assert data.ids == ["with space"]
    assert data[0].image_id == "with space" and data[0].image.size == (513, 513)


def test_a_split_list_that_is_not_utf8_is_named(voc_mini, tmp_path):
    root, dst, _ = _voc(voc_mini, tmp_path, b"2012_s00000\n2012_\xff\xfe\n")
    with pytest.raises(DatasetError, match="is not UTF-8"):
        VOCSegmentation(root, "val")
    _one_line_exit_2(_compute(root, tmp_path / "store"), "val.txt", "is not UTF-8")


@pytest.mark.skipif(AS_ROOT, reason=ROOT_SKIP)
def test_an_unreadable_split_list_is_named(voc_mini, tmp_path):
    root, dst, _ = _voc(voc_mini, tmp_path, "2012_s00000\n")
    val = dst / "ImageSets" / "Segmentation" / "val.txt"
    val.chmod(0)
    try:
        _one_line_exit_2(_compute(root, tmp_path / "store"), "cannot read split list", "val.txt")
    finally:
        val.chmod(0o644)


# ----------------------------------------------------------------------------------------------- images
def test_a_16_bit_png_named_jpg_is_scaled_not_clipped(voc_mini, tmp_path):
    root, dst, _ = _voc(voc_mini, tmp_path, "2012_s00000\n")
    path = dst / "JPEGImages" / "2012_s00000.jpg"
    grey = np.asarray(Image.open(path).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buf, format="PNG")  # 16-bit grey, full range
    path.write_bytes(buf.getvalue())
    assert Image.open(path).mode.startswith("I")  # what PIL makes of it: 16-bit integers
    got = np.asarray(VOCSegmentation(root, "val")[0].image)
    assert got.shape == (*grey.shape, 3)
    assert np.array_equal(got[..., 0], grey) and np.array_equal(got[..., 2], grey)


# ----------------------------------------------------------------------------------------------- the store
def test_a_damaged_run_manifest_is_named(voc_mini, tmp_path):
    out = tmp_path / "store"
    assert _compute(voc_mini, out).exit_code == 0
    [manifest] = (out / "runs").glob("*.json")
    manifest.write_text("not json")
    _one_line_exit_2(_compute(voc_mini, out), f"cannot read run manifest '{manifest}'", "Expecting value")


# ----------------------------------------------------------------------------------------------- outputs
def test_out_under_a_file_is_refused_before_the_run(voc_mini, tmp_path):
    (tmp_path / "somefile").write_text("x")
    _one_line_exit_2(_compute(voc_mini, tmp_path / "somefile" / "sub"), "--out",
                     f"'{tmp_path / 'somefile'}' is a file, not a folder")


def test_report_csv_under_a_file_is_refused(tmp_path):
    (tmp_path / "somefile").write_text("x")
    _one_line_exit_2(cli.invoke(app, ["report", "--store", str(tmp_path), "--csv",
                                      str(tmp_path / "somefile" / "t.csv")]),
                     "--csv", f"'{tmp_path / 'somefile'}' is a file, not a folder")


@pytest.mark.skipif(AS_ROOT, reason=ROOT_SKIP)
def test_report_csv_into_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _one_line_exit_2(cli.invoke(app, ["report", "--store", str(tmp_path), "--csv", str(folder / "t.csv")]),
                         "--csv", "is not writable")
    finally:
        folder.chmod(0o755)


def test_a_port_outside_1_65535_is_refused_before_streamlit_starts(tmp_path):
    from dashboard.launch import check_port  # imported first: without it the command below would start a server

    with pytest.raises(ValueError, match="not a TCP port"):
        check_port(99999)
    text = _one_line_exit_2(cli.invoke(app, ["dashboard", "--store", str(tmp_path), "--port", "99999",
                                             "--headless"]), "--port 99999 is not a TCP port")
    assert "http://" not in text  # refused before the "serving on" line


def test_the_demo_checks_its_port_before_the_work(tmp_path):
    _one_line_exit_2(cli.invoke(app, ["demo", "--small", "--out", str(tmp_path / "demo"), "--port", "0"]),
                     "--port 0 is not a TCP port")
    assert not (tmp_path / "demo").exists()


# ----------------------------------------------------------------------------------------------- options
def test_a_protocol_list_naming_nothing_is_refused(voc_mini, tmp_path):
    _one_line_exit_2(_compute(voc_mini, tmp_path / "store", "--protocol", ","), "--protocol ',' names no protocol")
    assert not (tmp_path / "store").exists()


def test_an_unknown_faithfulness_baseline_is_refused_without_faithfulness(voc_mini, tmp_path):
    _one_line_exit_2(_compute(voc_mini, tmp_path / "store", "--faithfulness-baseline", "foo"),
                     "unknown --faithfulness-baseline 'foo'", "zero, blur")
    assert not (tmp_path / "store").exists()

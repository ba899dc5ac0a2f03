"""The default model is named once (compute.DEFAULT_MODEL); every entry point that has a default must say the
same, or `make compute` and `vitlens compute` would explain different models."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from compute import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_default_model_is_the_package_default():
    print_model = ["make", "-s", "--no-print-directory", "--eval", "print-model: ; @echo $(MODEL)", "print-model"]
    # a bare environment: a MODEL variable of the caller's would override the Makefile's default
    out = subprocess.run(print_model, cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == DEFAULT_MODEL


def test_python_entry_points_default_to_the_package_default():
    import inspect

    from compute.cli import compute
    from compute.models import load_model
    from compute.runner import RunConfig

    assert RunConfig(out="x").model == DEFAULT_MODEL
    assert inspect.signature(load_model).parameters["name"].default == DEFAULT_MODEL
    assert inspect.signature(compute).parameters["model"].default.default == DEFAULT_MODEL  # a typer.Option

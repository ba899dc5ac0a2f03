"""The installed package carries every file the code opens at run time.

An editable install hides a missing file (it reads the checkout), so build a real wheel and look inside it.
"""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_data_pattern_matches_a_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"].get("package-data", {})
    for package, globs in patterns.items():
        for pattern in globs:
            assert list((ROOT / package).glob(pattern)), f"package-data {package}: {pattern!r} matches no file"


@pytest.mark.slow
def test_wheel_holds_every_module_and_data_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel, = tmp_path.glob("vitlens-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix()
                for package in ("compute", "store", "dashboard")
                for p in (ROOT / package).rglob("*")
                if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts}
    missing = sorted(expected - inside)
    assert not missing, f"the wheel lacks {missing}"

"""``python -m compute``: the ``vitlens`` command line (for an environment where the package is importable but
its console script is not installed)."""

from compute.cli import app

app(prog_name="vitlens")

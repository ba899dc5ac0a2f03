"""`vitlens dashboard` starts `streamlit run dashboard/app.py` with the store passed through."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dashboard import launch
from dashboard.data import store_path


def test_command_line(tmp_path):
    cmd = launch.command(tmp_path / "results", port=8765, host="0.0.0.0")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == launch.APP and launch.APP.is_file()
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--server.headless") + 1] == "true"  # never the interactive first-run prompt
    assert cmd[-3:] == ["--", "--store", str((tmp_path / "results").resolve())]


def test_store_path_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLENS_STORE", str(tmp_path / "env"))
    assert store_path(["--store", str(tmp_path / "arg")]) == (tmp_path / "arg").resolve()
    assert store_path(["-q", "tests"]) == (tmp_path / "env").resolve()
    monkeypatch.delenv("VITLENS_STORE")
    assert store_path([]) == Path("results").resolve()


def test_cli_dashboard_command(tmp_path, monkeypatch):
    from compute.cli import app

    seen = {}

    def fake_serve(store, port, host, headless):
        seen.update(store=store, port=port, host=host, headless=headless)
        return 0

    monkeypatch.setattr(launch, "serve", fake_serve)
    result = CliRunner().invoke(app, ["dashboard", "--store", str(tmp_path), "--port", "9999", "--host", "h"])
    assert result.exit_code == 0, result.output
    assert seen == {"store": tmp_path, "port": 9999, "host": "h", "headless": False}
    assert "dashboard" in CliRunner().invoke(app, ["--help"]).output

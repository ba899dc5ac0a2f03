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


def test_server_environment_names_the_store_and_one_blas_thread_unless_the_user_says(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    env = launch.server_env(tmp_path)
    assert env[launch.ENV_STORE] == str(tmp_path.resolve()) and env["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert launch.server_env(tmp_path)["OPENBLAS_NUM_THREADS"] == "4"


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


# ---- the real launcher: no warnings, a stop signal stops the server, a taken port is refused first ----------
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import pytest  # noqa: E402

from dashboard.browser import free_port  # noqa: E402
from tests.dashboard.conftest import REPO  # noqa: E402


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _launch(store, port):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys; from compute.cli import app; sys.argv = ['vitlens', 'dashboard', '--store', sys.argv[1], "
            "'--port', sys.argv[2], '--host', '127.0.0.1', '--headless']; app()")
    return subprocess.Popen([sys.executable, "-c", code, str(store), str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_importing_the_launcher_prints_no_runtime_warning():
    """`vitlens dashboard` imports the launcher only: Streamlit's cached functions, imported outside a server,
    print one "No runtime found" warning each."""
    code = "import sys, dashboard.launch; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "No runtime found" not in out.stderr + out.stdout
    assert out.stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_stops_the_server_and_frees_the_port(small_store, signum):
    port = free_port()
    proc = _launch(small_store, port)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.5)
        servers = _children(proc.pid)
        assert servers, "the launcher runs the server as a child process"
        proc.send_signal(signum)
        proc.wait(timeout=30)
        time.sleep(0.5)
        alive = [p for p in servers if Path(f"/proc/{p}").exists()
                 and "Z" not in (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[:1] or ["Z"])]
        assert not alive, f"server processes still alive after the signal: {alive}"
        assert not launch.port_in_use(port, "127.0.0.1")
        assert not _healthy(port)
        assert "No runtime found" not in proc.stdout.read()  # the launcher never imports the cached pages
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_taken_port_is_refused_before_the_url_is_announced(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert launch.port_in_use(port, "127.0.0.1")
        with pytest.raises(launch.PortInUse, match=str(port)):
            launch.serve(tmp_path, port=port, host="127.0.0.1", headless=True)
    assert "http://" not in capsys.readouterr().out
    assert not launch.port_in_use(port, "127.0.0.1")

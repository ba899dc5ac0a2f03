"""Start the dashboard server: ``streamlit run dashboard/app.py -- --store DIR`` with sensible options.

Nothing here imports Streamlit: the launcher only starts the server (importing the dashboard's cached
functions outside a running server prints a "No runtime found" warning per function). The server runs in its
own process group, and the launcher stops that group on SIGINT, SIGTERM or SIGHUP, so that no server is left
serving an old store on the port.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
#: the environment variable that names the store (read by :func:`dashboard.data.store_path`)
ENV_STORE = "VITLENS_STORE"
#: signals that stop the server with the launcher
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
STOP_GRACE_S = 10.0
#: the server's environment unless the user's sets them: one BLAS thread for NumPy, whose matrix products here
#: are small (the redrawn variants' blur), and whose second thread, spinning beside DuckDB's threads and the
#: browser on a small machine, slowed them twofold instead of helping (measured)
SERVER_ENV_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1"}


class PortInUse(OSError):
    """The port is already taken (often by a dashboard that is still running); the message says what to do."""


def server_env(store: str | Path) -> dict[str, str]:
    """The environment the server runs in: this one, :data:`SERVER_ENV_DEFAULTS` where it says nothing, and the
    store's path."""
    return {**SERVER_ENV_DEFAULTS, **os.environ, ENV_STORE: str(Path(store).expanduser().resolve())}


def command(store: str | Path, port: int = 8501, host: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line that serves ``store``. Streamlit itself always runs headless: its
    non-headless first start stops at an interactive e-mail prompt; :func:`serve` opens the browser instead."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(int(port)), "--server.address", str(host),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--global.disableWidgetStateDuplicationWarning", "true",
        "--", "--store", str(Path(store).expanduser().resolve()),
    ]


def check_port(port: int, host: str | None = None) -> None:
    """A TCP port is 1..65535; anything else would only fail inside Streamlit, after it started. With ``host``,
    also check that the port is free there, so that the URL is only announced when the server can bind it."""
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--port {port} is not a TCP port; choose one from 1 to 65535 (default 8501)")
    if host is not None and port_in_use(int(port), host):
        raise PortInUse(f"port {port} on {host} is already in use (another dashboard still running?); stop it "
                        f"or choose another with --port")


def port_in_use(port: int, host: str = "localhost") -> bool:
    """True when a server could not bind ``host:port`` now (a socket in TIME_WAIT does not count: the server
    reuses the address, as Streamlit's does)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # an unknown host: let the server report it
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def serve(store: str | Path, port: int = 8501, host: str = "localhost", headless: bool = False) -> int:
    """Run the server until it stops or a stop signal arrives; returns its exit code (0 after a stop signal)."""
    check_port(port, host)
    env = server_env(store)
    proc = subprocess.Popen(command(store, port, host), env=env, start_new_session=True)
    stopped = []

    def stop(signum, _frame):  # only signal here: the main thread's wait() holds the Popen's wait lock
        stopped.append(signum)
        _signal_group(proc, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        print(f"vitlens dashboard of {env[ENV_STORE]} on http://{host}:{port}  (Ctrl+C stops it)", flush=True)
        if not headless:
            import threading
            import webbrowser

            threading.Timer(2.0, webbrowser.open, args=(f"http://{host}:{port}",)).start()
        code = proc.wait()
    finally:
        stop_server(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopped else code


def stop_server(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    if proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:  # already gone
        pass

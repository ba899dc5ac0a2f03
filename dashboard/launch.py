"""Start the dashboard server: ``streamlit run dashboard/app.py -- --store DIR`` with sensible options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


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


def check_port(port: int) -> None:
    """A TCP port is 1..65535; anything else would only fail inside Streamlit, after it started."""
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--port {port} is not a TCP port; choose one from 1 to 65535 (default 8501)")


def serve(store: str | Path, port: int = 8501, host: str = "localhost", headless: bool = False) -> int:
    """Run the server until it stops (Ctrl+C); returns its exit code."""
    from dashboard.data import ENV_STORE

    check_port(port)
    env = {**os.environ, ENV_STORE: str(Path(store).expanduser().resolve())}
    print(f"vitlens dashboard of {env[ENV_STORE]} on http://{host}:{port}  (Ctrl+C stops it)", flush=True)
    if not headless:
        import threading
        import webbrowser

        threading.Timer(2.0, webbrowser.open, args=(f"http://{host}:{port}",)).start()
    try:
        return subprocess.call(command(store, port, host), env=env)
    except KeyboardInterrupt:
        return 0

"""app.py on a free 127.0.0.1 port, for the tests and the app benchmark: start, wait, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(app: Path, env_extra: dict[str, str], timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Launch `app` (app.py) on a free loopback port and wait until it answers; its output goes to a
    temporary log file (a pipe would fill and stall a long run), quoted if it exits early."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), **env_extra}
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (lives as long as the process)
    process = subprocess.Popen(
        [sys.executable, str(app)], env=env, cwd=app.parent, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    process.log = log  # the server's output so far: log.seek(0), log.read()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{app.name} exited with {process.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"{app.name} did not answer on {url} within {timeout} s")


def stop_app(process: subprocess.Popen) -> None:
    """Stop the app, killing it if it does not stop within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()

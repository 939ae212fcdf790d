"""How gis-server is served in production (gunicorn), shared by `gis-server serve`, the
benchmarks and the tests that need real worker processes.

Threaded workers (gthread) because Server-Sent Events (/api/v1/stream) hold a connection
open per viewer; a short graceful timeout so open streams do not hold a restart for 30 s.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# db.engine_for sizes its connection pool for this many threads: change both together.
WORKER_OPTIONS = ["--worker-class", "gthread", "--threads", "32", "--graceful-timeout", "5"]


def gunicorn_argv(bind: str, workers: int = 2, log_level: str = "info",
                  access_log: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), *WORKER_OPTIONS,
            "--bind", bind, "--log-level", log_level]
    if access_log:
        argv += ["--access-logfile", "-"]
    return argv + ["gis_server.wsgi:app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(base: str) -> bool:
    """``/healthz`` answers (the app and its database are up), not just the socket."""
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
            return response.status < 500
    except (OSError, urllib.error.HTTPError):
        return False


@contextmanager
def gunicorn_process(database_url: str, workers: int = 2, env: dict | None = None,
                     ready_within: float = 90.0):
    """gunicorn with the production options on a free local port, for benchmarks and tests
    that need real worker processes; yields its base URL once ``/healthz`` answers."""
    port = free_port()
    proc = subprocess.Popen(
        gunicorn_argv(f"127.0.0.1:{port}", workers, log_level="warning", access_log=False),
        env={**os.environ, **(env or {}), "DATABASE_URL": database_url}, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_within
        while not healthy(base):
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""Shared helpers for benchmarks: pick the database, start gunicorn, run wrk, print figures."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gis_server.pgcluster import Cluster  # noqa: E402
from gis_server.serving import gunicorn_argv  # noqa: E402


def database_url(dbname: str | None) -> str:
    """``--db NAME`` on the embedded cluster, else DATABASE_URL, else the demo database."""
    if dbname:
        cluster = Cluster()
        cluster.start()
        return cluster.url(dbname)
    from gis_server.pgcluster import database_url as default_url
    return default_url()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
            return response.status < 500
    except (OSError, urllib.error.HTTPError):
        return False


@contextmanager
def gunicorn(url: str, workers: int = 2):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url)
    # The limiter still runs on every public request; the budget is raised so that one
    # benchmarking address is not throttled (which would measure 429s, not the route).
    env.setdefault("GIS_PUBLIC_RATE_LIMIT", "1000000000/minute")
    # The same worker class and options as `gis-server serve` (production).
    proc = subprocess.Popen(
        gunicorn_argv(f"127.0.0.1:{port}", workers, log_level="warning", access_log=False),
        env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready = /healthz answers (the app and its database are up), not just the socket.
        deadline = time.time() + 90
        while not _healthy(base):
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


def wrk(url: str, seconds: int = 10, connections: int = 16, threads: int = 1,
        script: str | None = None) -> dict:
    """Run wrk; return requests/s, latency percentiles (ms) and error counts."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        argv[1:1] = ["-s", script]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none", "raw": out}

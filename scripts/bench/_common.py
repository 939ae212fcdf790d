"""Shared helpers for benchmarks: pick the database, start gunicorn, run wrk, print figures."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gis_server.pgcluster import Cluster  # noqa: E402
from gis_server.serving import gunicorn_process  # noqa: E402


def database_url(dbname: str | None) -> str:
    """``--db NAME`` on the embedded cluster, else DATABASE_URL, else the demo database."""
    if dbname:
        cluster = Cluster()
        cluster.start()
        return cluster.url(dbname)
    from gis_server.pgcluster import database_url as default_url
    return default_url()


@contextmanager
def gunicorn(url: str, workers: int = 2):
    # The limiter still runs on every public request; the budget is raised so that one
    # benchmarking address is not throttled (which would measure 429s, not the route).
    # The same worker class and options as `gis-server serve` (production).
    env = {"GIS_PUBLIC_RATE_LIMIT": os.environ.get("GIS_PUBLIC_RATE_LIMIT",
                                                   "1000000000/minute")}
    with gunicorn_process(url, workers, env) as base:
        yield base


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

"""How gis-server is served in production (gunicorn), shared by `gis-server serve`, the
benchmarks and the tests that need real worker processes.

Threaded workers (gthread) because Server-Sent Events (/api/v1/stream) hold a connection
open per viewer; a short graceful timeout so open streams do not hold a restart for 30 s.
"""
from __future__ import annotations

import sys

# db.engine_for sizes its connection pool for this many threads: change both together.
WORKER_OPTIONS = ["--worker-class", "gthread", "--threads", "32", "--graceful-timeout", "5"]


def gunicorn_argv(bind: str, workers: int = 2, log_level: str = "info",
                  access_log: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), *WORKER_OPTIONS,
            "--bind", bind, "--log-level", log_level]
    if access_log:
        argv += ["--access-logfile", "-"]
    return argv + ["gis_server.wsgi:app"]

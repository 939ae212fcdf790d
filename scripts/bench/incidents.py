"""Benchmark: incident intake through gunicorn, bulk import, indicators (the large city).

    python scripts/bench/incidents.py [--db gis_bench_large] [--seconds 5] [--rows 100000]

1. ``POST /api/v1/incidents`` through gunicorn (2 workers) with wrk: created/s (goal ≥ 500).
   Points are building anchors (inside grids); a staff bearer token is made here.
2. Bulk import of ``--rows`` historical incidents over a year from CSV (COPY; goal < 30 s),
3. indicators for every unit grid over that year (goal < 1 s) —
   2 and 3 run in one transaction that is rolled back, so the database is left as it was
   (the incidents created in 1 stay: the benchmark city may hold incidents).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from _common import database_url, gunicorn, wrk
from sqlalchemy import create_engine, text

from gis_server.db import migrate

LUA = """
local points = %(points)s
local cats = %(cats)s
local n = 0
request = function()
  n = n + 1
  local p = points[(n %% #points) + 1]
  local body = string.format('{"category":"%%s","description":"bench","lon":%%.7f,"lat":%%.7f,'
    .. '"source":"patrol"}', cats[(n %% #cats) + 1], p[1], p[2])
  return wrk.format("POST", "/api/v1/incidents",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


def warm_up(base: str, token: str, code: str, points, n: int) -> None:
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def post(i):
        x, y = points[i % len(points)]
        req = urllib.request.Request(
            f"{base}/api/v1/incidents", method="POST",
            data=json.dumps({"category": code, "description": "bench", "lon": x,
                             "lat": y}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(post, range(n)))
    if any(s != 201 for s in statuses):
        raise SystemExit(f"warm-up failed: {statuses}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="gis_bench_large")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    url = database_url(args.db)
    migrate(url)
    os.environ["GIS_PUBLIC_RATE_LIMIT"] = "1000000/minute"
    from gis_server.config import load as load_config
    from gis_server.core import accounts, categories, indicators
    from gis_server.core.incidents_bulk import import_csv
    from gis_server.core.locate import GridIndex

    engine = create_engine(url)
    pepper = load_config()["TOKEN_PEPPER"]
    with engine.begin() as conn:
        user = accounts.create_user(conn, f"bench_incidents_{int(time.time())}", "admin")
        token, _ = accounts.issue_token(conn, user["id"], pepper,
                                        expires_in=timedelta(hours=1), label="bench")
        units = conn.execute(text("SELECT count(*) FROM grids WHERE level = 'unit' "
                                  "AND valid_to IS NULL")).scalar_one()
        anchors = conn.execute(text("SELECT ST_X(anchor), ST_Y(anchor) FROM buildings "
                                    "WHERE grid_id IS NOT NULL ORDER BY random() "
                                    "LIMIT 200000")).all()
        before = conn.execute(text("SELECT count(*) FROM incidents")).scalar_one()
    # (categories with a required attribute would answer 400 to this body)
    codes = [c.code for c in categories.load().values()
             if not any(a["required"] for a in c.attributes)]
    sample = anchors[:2000]
    lua = LUA % {"points": "{" + ",".join(f"{{{x:.7f},{y:.7f}}}" for x, y in sample) + "}",
                 "cats": "{" + ",".join(json.dumps(c) for c in codes) + "}", "token": token}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    with gunicorn(url, workers=2) as base:
        # Each worker builds its grid index on its first request (seconds on this city):
        # longer than wrk's 2 s timeout, so warm both up with patient requests first.
        warm_up(base, token, codes[0], sample, n=args.connections)
        wrk(f"{base}/", seconds=2, connections=args.connections, script=f.name)  # warm-up
        intake = wrk(f"{base}/", seconds=args.seconds, connections=args.connections,
                     script=f.name)
    if intake["rps"] == 0 or intake["socket_errors"] != "none":
        print(intake["raw"])
    with engine.connect() as conn:
        created = conn.execute(text("SELECT count(*) FROM incidents")).scalar_one() - before

    # -- bulk import + indicators, rolled back --------------------------------------------
    rng = np.random.default_rng(1)
    pts = np.array(anchors)[rng.integers(0, len(anchors), args.rows)]
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    reported = start + pd.to_timedelta(rng.uniform(0, 365 * 86400, args.rows), unit="s")
    dispatched = reported + pd.to_timedelta(rng.uniform(600, 7200, args.rows), unit="s")
    due = dispatched + pd.to_timedelta(rng.choice([4, 8, 24, 72], args.rows), unit="h")
    closed = dispatched + pd.to_timedelta(rng.exponential(20, args.rows), unit="h")
    is_closed = rng.random(args.rows) < 0.9
    df = pd.DataFrame({
        "category": rng.choice(codes, args.rows), "description": "historical",
        "lon": pts[:, 0], "lat": pts[:, 1], "source": "patrol",
        "status": np.where(is_closed, "closed", "handling"),
        "reported_at": reported, "filed_at": reported, "dispatched_at": dispatched,
        "due_at": due, "closed_at": pd.Series(closed).where(is_closed),
        "postponed": rng.random(args.rows) < 0.02,
        "rework_count": (rng.random(args.rows) < 0.05).astype(int),
        "extension_count": (rng.random(args.rows) < 0.03).astype(int)})
    csv = io.StringIO()
    df.to_csv(csv, index=False)
    csv.seek(0)
    with engine.connect() as conn:
        index = GridIndex.build(conn)
        conn.commit()
        trans = conn.begin()
        t0 = time.perf_counter()
        n = import_csv(conn, index, csv, actor="bench")
        import_s = time.perf_counter() - t0
        conn.execute(text("ANALYZE incidents"))
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            rows = indicators.indicators(conn, "grid", start, start + timedelta(days=365))
            timings.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        streets = indicators.indicators(conn, "street", start, start + timedelta(days=365))
        street_s = time.perf_counter() - t0
        trans.rollback()

    print(f"city: {units:,} unit grids")
    print(f"intake POST /api/v1/incidents, gunicorn 2 workers, wrk {args.connections} "
          f"connections {args.seconds}s: {intake['rps']:.0f} req/s, {created:,} incidents "
          f"created ({created / args.seconds:.0f}/s incl. warm-up rows), p50 "
          f"{intake['p50_ms']:.1f} ms, p99 {intake['p99_ms']:.1f} ms, non-2xx "
          f"{intake['non_2xx']} (goal ≥ 500/s)")
    print(f"bulk import: {n:,} historical incidents in {import_s:.2f} s "
          f"({n / import_s:,.0f}/s) (goal < 30 s)")
    print(f"indicators level=grid over a year: {len(rows):,} grids ranked, best of 3 "
          f"{min(timings) * 1000:.0f} ms (runs: "
          f"{', '.join(f'{t * 1000:.0f}' for t in timings)} ms) (goal < 1 s); level=street "
          f"{len(streets)} rows in {street_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()

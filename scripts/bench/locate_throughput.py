"""Benchmark: /api/v1/locate vs the app's /hello through gunicorn (2 workers), with wrk.

    python scripts/bench/locate_throughput.py [--db gis_bench_large] [--seconds 10]

Prints requests/s for both routes in the same run, the ratio (goal ≥ 60 % of hello-world),
HTTP latency percentiles, and the in-process single-lookup latency of GridIndex.locate.
Random points are drawn uniformly in the city's unit-grid extent (a few fall outside: 404s
are real lookups too and are counted separately by wrk as non-2xx).
"""
from __future__ import annotations

import contextlib
import argparse
import statistics
import tempfile
import time

import numpy as np
from _common import database_url, gunicorn, wrk
from sqlalchemy import create_engine, text

LUA = """
math.randomseed(42)
request = function()
  local lon = %(minx)f + math.random() * %(dx)f
  local lat = %(miny)f + math.random() * %(dy)f
  return wrk.format("GET", string.format("/api/v1/locate?lon=%%.6f&lat=%%.6f", lon, lat))
end
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", help="database name on the embedded cluster (default: demo db)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    url = database_url(args.db)
    engine = create_engine(url)
    with engine.connect() as conn:
        units = conn.execute(text(
            "SELECT count(*) FROM grids WHERE level='unit' AND valid_to IS NULL")).scalar_one()
        minx, miny, maxx, maxy = conn.execute(text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT "
            "ST_Extent(geom)::geometry e FROM grids WHERE level='unit' AND valid_to IS NULL) q"
        )).one()
        from gis_server.core.locate import GridIndex, NotCovered
        t0 = time.perf_counter()
        index = GridIndex.build(conn)
        build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(minx, maxx, 20000), rng.uniform(miny, maxy, 20000)])
    timings = []
    for lon, lat in pts:
        t0 = time.perf_counter()
        with contextlib.suppress(NotCovered):  # uncovered points are lookups too
            index.locate(lon, lat)
        timings.append((time.perf_counter() - t0) * 1e6)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"minx": minx, "miny": miny, "dx": maxx - minx, "dy": maxy - miny})
        lua = f.name
    with gunicorn(url, workers=2) as base:
        wrk(f"{base}/hello", seconds=2, connections=args.connections)  # warm-up
        wrk(f"{base}/", seconds=2, connections=args.connections, script=lua)
        hello = wrk(f"{base}/hello", seconds=args.seconds, connections=args.connections)
        locate = wrk(f"{base}/", seconds=args.seconds, connections=args.connections,
                     script=lua)
    print(f"city: {units:,} unit grids; index build {build_s * 1000:.0f} ms")
    print(f"in-process GridIndex.locate: p50 {statistics.median(timings):.1f} µs, "
          f"p99 {np.percentile(timings, 99):.1f} µs over {len(timings):,} lookups")
    print(f"gunicorn 2 workers, wrk 1 thread {args.connections} connections "
          f"{args.seconds}s each:")
    for name, r in (("hello", hello), ("locate", locate)):
        print(f"  {name:7s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}  socket errors "
              f"{r['socket_errors']}")
    print(f"locate / hello = {locate['rps'] / hello['rps'] * 100:.1f} % (goal ≥ 60 %)")


if __name__ == "__main__":
    main()

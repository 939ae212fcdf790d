"""Analytics benchmarks on the large city (gis_bench_large: 300,000 buildings).

* an OGC items page of 1,000 buildings (goal p50 < 150 ms), a middle page via the cursor;
* a z14 building tile, uncached (goal p50 < 30 ms): density points (gis_server/core/tiles.py);
  for reference a z15 tile (the first zoom with full footprints);
* the client loading all 300,000 buildings into a GeoDataFrame (goal < 10 s): FlatGeobuf
  pages (the default); ``--json`` also times GeoJSON pages (``Client(encoding="json")``).

Usage: .venv/bin/python scripts/bench/analytics.py [--db gis_bench_large] [--rounds 20] [--json]
Requests go through gunicorn (2 workers) with an analyst token created for the run (removed
afterwards). Nothing in the city is changed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import requests
from _common import database_url, gunicorn
from sqlalchemy import text

from gis_server.core import accounts as acc
from gis_server.db import engine_for


def tile_of(lon, lat, z):
    n = 1 << z
    return (int((lon + 180) / 360 * n),
            int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n))


def timed(session, urls):
    out = []
    for url in urls:
        t = time.perf_counter()
        r = session.get(url)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="gis_bench_large")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="also time the client on GeoJSON")
    args = ap.parse_args()
    url = database_url(args.db)
    engine = engine_for(url)
    from gis_server.config import load
    pepper = load()["TOKEN_PEPPER"]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM users WHERE username = 'bench_analyst'"))
        user = acc.create_user(conn, "bench_analyst", "analyst", None,
                               password="bench-analyst-0123456789")
        token, _ = acc.issue_token(conn, user["id"], pepper)
        total = conn.execute(text("SELECT count(*) FROM buildings")).scalar()
        mid_id = conn.execute(text("SELECT id FROM buildings ORDER BY id OFFSET :o LIMIT 1"),
                              {"o": total // 2}).scalar()
        anchors = conn.execute(text(
            "SELECT ST_X(anchor), ST_Y(anchor) FROM buildings TABLESAMPLE SYSTEM (1) "
            "LIMIT :n"), {"n": args.rounds}).all()
    try:
        with gunicorn(url, workers=2) as base:
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {token}"
            items = f"{base}/ogc/collections/buildings/items?limit=1000"
            timed(s, [items] * 3)  # warm up
            first = timed(s, [items] * args.rounds)
            from gis_server.core.ogc import encode_cursor
            middle = timed(s, [f"{items}&cursor={encode_cursor([mid_id])}"] * args.rounds)
            tiles = [f"{base}/tiles/buildings/14/{x}/{y}.mvt"
                     for x, y in (tile_of(lon, lat, 14) for lon, lat in anchors)]
            timed(s, tiles[:2])
            tile_ms = timed(s, tiles)  # different tiles, no HTTP cache: each one computed
            sizes = [len(s.get(t).content) for t in tiles[:5]]
            tiles15 = [f"{base}/tiles/buildings/15/{x}/{y}.mvt"
                       for x, y in (tile_of(lon, lat, 15) for lon, lat in anchors)]
            tile15_ms = timed(s, tiles15)
            sizes15 = [len(s.get(t).content) for t in tiles15[:5]]
            print(f"buildings in city: {total:,}")
            print(f"OGC items page of 1,000 buildings (first page): p50 "
                  f"{statistics.median(first):.1f} ms, max {max(first):.1f} ms "
                  f"(goal p50 < 150 ms)")
            print(f"OGC items page of 1,000 buildings (cursor, middle of 300k): p50 "
                  f"{statistics.median(middle):.1f} ms, max {max(middle):.1f} ms")
            print(f"z14 building tile, uncached ({len(tiles)} tiles): p50 "
                  f"{statistics.median(tile_ms):.1f} ms, max {max(tile_ms):.1f} ms, "
                  f"~{statistics.mean(sizes) / 1024:.0f} KiB (goal p50 < 30 ms)")
            print(f"z15 building tile (footprints), uncached ({len(tiles15)} tiles): p50 "
                  f"{statistics.median(tile15_ms):.1f} ms, max {max(tile15_ms):.1f} ms, "
                  f"~{statistics.mean(sizes15) / 1024:.0f} KiB")
            from gis_server.client import PAGE_SIZE, Client
            t = time.perf_counter()
            gdf = Client(base, token, progress=False).buildings()
            elapsed = time.perf_counter() - t
            print(f"client: all buildings into a GeoDataFrame: {len(gdf):,} rows in "
                  f"{elapsed:.1f} s (goal < 10 s; FlatGeobuf pages of {PAGE_SIZE:,})")
            if args.json:
                t = time.perf_counter()
                gdf = Client(base, token, progress=False, encoding="json").buildings()
                print(f"client (GeoJSON pages): {len(gdf):,} rows in "
                      f"{time.perf_counter() - t:.1f} s")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM users WHERE username = 'bench_analyst'"))


if __name__ == "__main__":
    main()

"""Benchmark: bulk routing of N random points to unit grids.

    python scripts/bench/route_points.py [--db gis_bench_large] [--points 1000000]

Three ways, same points, answers cross-checked on a sample:
  * GridIndex.route_points (shapely STRtree, vectorised),
  * PostGIS join against grid_parts (subdivided polygons), points COPYed into a temp table,
  * PostGIS join against the whole grid polygons (the naive way).
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
from _common import database_url
from sqlalchemy import create_engine, text

from gis_server.core.locate import GridIndex


def postgis_route(conn, lons, lats, table: str) -> tuple[float, dict]:
    conn.execute(text("DROP TABLE IF EXISTS bench_points"))
    conn.execute(text("CREATE TEMP TABLE bench_points (id int, geom geometry(Point, 4326))"))
    buf = io.StringIO()
    for i, (x, y) in enumerate(zip(lons, lats)):
        buf.write(f"{i}\tSRID=4326;POINT({float(x)!r} {float(y)!r})\n")  # full precision: no edge moves
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cur, cur.copy("COPY bench_points FROM STDIN") as cp:
        cp.write(buf.getvalue())
    conn.execute(text("CREATE INDEX ON bench_points USING gist (geom)"))
    conn.execute(text("ANALYZE bench_points"))
    join = ("JOIN grid_parts p ON p.level = 'unit' AND ST_Intersects(p.geom, b.geom) "
            "JOIN grids g ON g.id = p.grid_id") if table == "grid_parts" else (
            "JOIN grids g ON g.level = 'unit' AND g.valid_to IS NULL "
            "AND ST_Intersects(g.geom, b.geom)")
    t0 = time.perf_counter()
    rows = conn.execute(text(
        f"SELECT DISTINCT ON (b.id) b.id, g.code FROM bench_points b {join} "
        f"ORDER BY b.id, g.code")).all()
    return time.perf_counter() - t0, dict(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db")
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--sql-points", type=int, default=200_000,
                    help="points for the (slower) PostGIS variants")
    args = ap.parse_args()
    engine = create_engine(database_url(args.db))
    with engine.connect() as conn:
        index = GridIndex.build(conn)
        minx, miny, maxx, maxy = conn.execute(text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT "
            "ST_Extent(geom)::geometry e FROM grids WHERE level='unit' AND valid_to IS NULL) q"
        )).one()
        rng = np.random.default_rng(5)
        lons = rng.uniform(minx, maxx, args.points)
        lats = rng.uniform(miny, maxy, args.points)
        t0 = time.perf_counter()
        codes = index.route_points(lons, lats)
        py_s = time.perf_counter() - t0
        print(f"{len(index.codes):,} unit grids, {args.points:,} random points in the extent")
        print(f"STRtree route_points: {py_s:.2f} s = {args.points / py_s:,.0f} points/s "
              f"({(codes != None).sum():,} routed)")  # noqa: E711
        n = min(args.sql_points, args.points)
        for table in ("grid_parts", "grids"):
            secs, answer = postgis_route(conn, lons[:n], lats[:n], table)
            agree = sum(answer.get(i) == codes[i] for i in range(n))
            print(f"PostGIS join on {table:10s}: {n:,} points in {secs:.2f} s = "
                  f"{n / secs:,.0f} points/s; agrees with STRtree on {agree / n * 100:.3f} %")
        conn.rollback()


if __name__ == "__main__":
    main()

"""Benchmark: planning on the large city — validate, impact of redrawing 50 unit grids, publish.

    python scripts/bench/planning.py [--db gis_bench_large] [--pairs 25]

Everything runs in ONE transaction that is rolled back at the end, so the benchmark city
stays intact (if the database predates the planning tables, revision 0005's upgrade runs inside
that transaction too). The redraw: in 25 communities, two west/east neighbouring unit grids
trade a triangle of land on their shared edge (50 grids changed, coverage preserved).
Goals (issue 5): validation < 2 s, impact < 3 s, publish < 10 s.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import shapely
from _common import database_url
from sqlalchemy import create_engine, text

from gis_server.core import plans as core
from gis_server.core import validation as v
from gis_server.db import scope_connection


def ensure_schema(conn) -> str:
    if conn.execute(text("SELECT to_regclass('plans')")).scalar():
        return "present"
    import importlib

    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    mod = importlib.import_module("gis_server.migrations.versions.0005_planning")
    ctx = MigrationContext.configure(conn)
    with Operations.context(ctx):
        mod.upgrade()
    return "created in the rolled-back transaction"


def pick_pairs(conn, n_pairs: int):
    """(west, east) unit grids sharing an edge, one pair per community."""
    rows = conn.execute(text("""
        SELECT DISTINCT ON (p.code) a.code AS a, ST_AsBinary(a.geom) AS ga,
               b.code AS b, ST_AsBinary(b.geom) AS gb
        FROM grids a JOIN grids b ON b.parent_id = a.parent_id AND b.valid_to IS NULL
          AND b.level = 'unit' AND b.code > a.code
          AND ST_Length(ST_Intersection(ST_Boundary(a.geom), ST_Boundary(b.geom))) > 0
        JOIN grids p ON p.id = a.parent_id
        WHERE a.level = 'unit' AND a.valid_to IS NULL
        ORDER BY p.code, a.code, b.code
        LIMIT :n
    """), {"n": n_pairs}).all()
    return [(r.a, shapely.from_wkb(r.ga), r.b, shapely.from_wkb(r.gb)) for r in rows]


def trade(a, b, degrees=0.0004):
    shared = shapely.line_merge(shapely.intersection(a.boundary, b.boundary))
    p, q = shapely.get_coordinates(shared)[[0, -1]]
    ca, cb = (shapely.get_coordinates(g.centroid)[0] for g in (a, b))
    d = (cb - ca) / np.hypot(*(cb - ca))
    tri = shapely.Polygon([p, q, (p + q) / 2 + d * degrees])
    return shapely.union(a, tri), shapely.difference(b, tri)


def timed(label, fn, results):
    t0 = time.perf_counter()
    out = fn()
    results[label] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="gis_bench_large")
    ap.add_argument("--pairs", type=int, default=25)
    ap.add_argument("--owner", action="store_true",
                    help="run as the database owner instead of the request role gis_app "
                         "(row-level security on, whole-city scope)")
    ap.add_argument("--scoped-impact", action="store_true",
                    help="also time the impact as a street admin would read it (scoped: RLS "
                         "stays on for the set operations)")
    args = ap.parse_args()
    engine = create_engine(database_url(args.db))
    t = {}
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            schema = ensure_schema(conn)
            if not args.owner:  # as a request does: RLS policies apply
                scope_connection(conn, "")  # as a request of a whole-city planner
            counts = conn.execute(text(
                "SELECT (SELECT count(*) FROM grids WHERE level = 'unit' AND valid_to IS NULL),"
                " (SELECT count(*) FROM buildings), (SELECT count(*) FROM households)")).one()
            print(f"city: {counts[0]:,} unit grids, {counts[1]:,} buildings, "
                  f"{counts[2]:,} households (planning tables: {schema}; "
                  f"role: {'owner' if args.owner else 'gis_app, RLS on'})")
            report = timed("validate_hierarchy", lambda: v.validate_hierarchy(conn), t)
            print(f"validate whole hierarchy ({sum(report['grids'].values()):,} grids): "
                  f"{t['validate_hierarchy']:.2f} s, {len(report['problems'])} problems "
                  f"(goal < 2 s)")
            plan = timed("create_plan", lambda: core.create_plan(conn, "bench redraw", "unit",
                                                                   actor="bench"), t)
            pid = plan["id"]
            pairs = pick_pairs(conn, args.pairs)

            def edit():
                for a_code, ga, b_code, gb in pairs:
                    a2, b2 = trade(ga, gb)
                    core.replace_grid(conn, pid, a_code, a2, actor="bench")
                    core.replace_grid(conn, pid, b_code, b2, actor="bench")
            timed("edits", edit, t)
            changed = core.get_plan(conn, pid)["grids"]["changed"]
            print(f"create plan (copy {plan['grids']['kept']:,} grids): "
                  f"{t['create_plan']:.2f} s; {changed} grids redrawn in {t['edits']:.2f} s")
            check = timed("validate_plan", lambda: core.validate_plan(conn, pid), t)
            print(f"validate the draft ({len(check['checked_parents'])} communities): "
                  f"{t['validate_plan']:.2f} s, {len(check['problems'])} problems")
            impact = timed("impact", lambda: core.impact(conn, pid), t)
            m = impact["moved"]
            print(f"impact of redrawing {changed} unit grids: {t['impact']:.2f} s (goal < 3 s): "
                  f"{m['buildings']} buildings, {m['households']} households, "
                  f"{m['persons']} persons, {m['facilities']} facilities, "
                  f"{m['open_incidents']} open incidents move; "
                  f"{len(impact['straddling_buildings'])} straddle; "
                  f"{len(impact['grids'])} grids balanced")
            if args.scoped_impact and not args.owner:
                street = conn.execute(text("SELECT left(min(code), 9) FROM grids "
                                           "WHERE level = 'street'")).scalar()
                scope_connection(conn, street)
                timed("impact_scoped", lambda: core.impact(conn, pid), t)
                scope_connection(conn, "")
                print(f"impact read by a street admin (scope {street}, RLS on): "
                      f"{t['impact_scoped']:.2f} s")
            result = timed("publish", lambda: core.publish(conn, pid, actor="bench"), t)
            print(f"publish: {t['publish']:.2f} s (goal < 10 s): generation "
                  f"{result['generation_id']}, {result['closed_grids']} rows closed, "
                  f"{result['new_grids']} opened, re-derived {result['rederived']}")
            after = conn.execute(text(
                "SELECT count(*) FROM buildings b JOIN grids g ON g.id = b.grid_id "
                "WHERE g.valid_to IS NOT NULL")).scalar()
            print(f"check: buildings pointing at a closed grid after publish: {after}")
        finally:
            trans.rollback()
            print("rolled back: the benchmark city is unchanged")


if __name__ == "__main__":
    main()

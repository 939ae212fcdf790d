"""Patrol coverage on a hand-made track with a known answer."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from helpers import authed_client
from sqlalchemy import text

DAY = "2025-07-01"
D = 30.0


@pytest.fixture(scope="module")
def walked(engine, app, accounts):
    """A grid admin walks a straight east-west line through the middle of their (rectangular)
    unit grid, from 60 m west of it to 60 m east of it, one fix a minute every 10 m."""
    with engine.connect() as conn:
        srid = conn.execute(text("SELECT metric_srid FROM city")).scalar()
        g = conn.execute(text("""
            SELECT w.id AS worker_id, w.device_id, g.code, ST_Area(m.geom) AS area,
                   ST_XMin(m.geom) AS x0, ST_XMax(m.geom) AS x1,
                   ST_YMin(m.geom) AS y0, ST_YMax(m.geom) AS y1,
                   ST_AsEWKB(m.geom) AS metric_geom
            FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id AND wg.is_responsible
            JOIN grids g ON g.code = wg.grid_code AND g.valid_to IS NULL,
            LATERAL (SELECT ST_Transform(g.geom, :srid) AS geom) m
            WHERE w.role = 'grid_admin'
            ORDER BY g.code DESC LIMIT 1"""), {"srid": srid}).one()
        ymid = (g.y0 + g.y1) / 2
        n = int((g.x1 - g.x0 + 120) // 10) + 1
        pts = conn.execute(text("""
            SELECT ST_X(p), ST_Y(p) FROM (
              SELECT ST_Transform(ST_SetSRID(ST_MakePoint(:x0 - 60 + 10 * i, :y), :srid), 4326) p
              FROM generate_series(0, :n - 1) i) q"""),
            {"x0": g.x0, "y": ymid, "srid": srid, "n": n}).all()
    t0 = datetime(2025, 7, 1, 9, 0, tzinfo=timezone.utc)
    fixes = [{"id": g.device_id, "lon": x, "lat": y,
              "timestamp": int((t0 + timedelta(minutes=i)).timestamp())}
             for i, (x, y) in enumerate(pts)]
    client = authed_client(app, accounts["admin"]["token"])
    body = client.post("/api/v1/positions", json=fixes).json
    assert body["accepted"] == len(fixes)
    return g, srid, ymid


def test_coverage_of_a_straight_walk(client, engine, walked):
    g, srid, ymid = walked
    r = client.get(f"/api/v1/patrol-coverage?date={DAY}&level=unit&distance={D}")
    assert r.status_code == 200
    body = r.json
    grid = next(x for x in body["grids"] if x["code"] == g.code)
    assert g.y1 - g.y0 > 2 * D
    with engine.connect() as conn:
        # The buffer of a straight line that overshoots the grid by more than D on both
        # sides is, inside the grid, exactly the band |y - ymid| <= D.
        band = conn.execute(text("""
            SELECT ST_Area(ST_Intersection(ST_GeomFromEWKB(:g),
                   ST_MakeEnvelope(:x0 - 1000, :y - :d, :x1 + 1000, :y + :d, :srid)))"""),
            {"g": g.metric_geom, "x0": g.x0, "x1": g.x1, "y": ymid, "d": D,
             "srid": srid}).scalar()
    assert band > 0
    assert grid["covered_m2"] == pytest.approx(band, rel=1e-3)
    assert grid["area_share"] == pytest.approx(band / g.area, abs=1e-3)
    with engine.connect() as conn:
        expected_buildings = conn.execute(text("""
            SELECT count(*) FILTER (WHERE ST_DWithin(ST_Transform(b.geom, :srid),
                       ST_SetSRID(ST_MakeLine(ST_MakePoint(:x0 - 60, :y),
                                              ST_MakePoint(:x1 + 60, :y)), :srid), :d)),
                   count(*)
            FROM buildings b JOIN grids u ON u.id = b.grid_id WHERE u.code = :c"""),
            {"srid": srid, "x0": g.x0, "x1": g.x1, "y": ymid, "d": D, "c": g.code}).one()
    assert grid["buildings"] == expected_buildings[1] > 0
    assert grid["buildings_covered"] == expected_buildings[0]
    assert grid["workers_walked"] == 1
    # nobody else walked that day: every other grid is listed as unwalked
    assert g.code not in body["unwalked"]
    assert len(body["unwalked"]) == len(body["grids"]) - 1
    assert body["summary"]["walked"] == 1


def test_coverage_at_community_level_and_parameters(client, walked):
    g, _, _ = walked
    units = client.get(f"/api/v1/patrol-coverage?date={DAY}&distance={D}").json["grids"]
    community = g.code[:12] + "00"
    body = client.get(f"/api/v1/patrol-coverage?date={DAY}&level=community&distance={D}").json
    c = next(x for x in body["grids"] if x["code"] == community)
    mine = [u for u in units if u["code"].startswith(g.code[:12])]
    assert c["area_m2"] == pytest.approx(sum(u["area_m2"] for u in mine), rel=1e-6)
    assert c["covered_m2"] == pytest.approx(sum(u["covered_m2"] for u in mine), rel=1e-6)
    wider = client.get(f"/api/v1/patrol-coverage?date={DAY}&distance=60").json["grids"]
    assert next(x for x in wider if x["code"] == g.code)["covered_m2"] > \
        next(x for x in units if x["code"] == g.code)["covered_m2"]
    other_day = client.get("/api/v1/patrol-coverage?date=2025-07-02").json
    assert other_day["summary"]["walked"] == 0
    assert client.get("/api/v1/patrol-coverage?level=planet").json["field"] == "level"
    assert client.get("/api/v1/patrol-coverage?distance=-1").json["field"] == "distance"

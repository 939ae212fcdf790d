"""Locate: the in-process index against an independent shapely computation and PostGIS."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import geopandas as gpd
import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis_server.core.locate import GridIndex, GridIndexCache, NotCovered, locate_sql


@pytest.fixture(scope="module")
def units(engine):
    with engine.connect() as conn:
        return gpd.read_postgis(
            "SELECT code, name, geom FROM grids WHERE level = 'unit' AND valid_to IS NULL "
            "ORDER BY code", conn, geom_col="geom")


@pytest.fixture(scope="module")
def index(engine):
    with engine.connect() as conn:
        return GridIndex.build(conn)


def expected_owner(units, lon, lat):
    """Independent answer: every unit grid that covers the point, smallest code first."""
    hits = units[units.geometry.covers(shapely.Point(lon, lat))]
    return sorted(hits.code)


def random_points(units, n, seed=7):
    minx, miny, maxx, maxy = units.total_bounds
    rng = np.random.default_rng(seed)
    pad_x, pad_y = (maxx - minx) * 0.1, (maxy - miny) * 0.1
    return (rng.uniform(minx - pad_x, maxx + pad_x, n), rng.uniform(miny - pad_y, maxy + pad_y, n))


def test_random_points_agree_with_shapely_and_postgis(units, index, engine):
    lons, lats = random_points(units, 300)
    inside = 0
    with engine.connect() as conn:
        for lon, lat in zip(lons, lats):
            expected = expected_owner(units, lon, lat)
            if not expected:
                with pytest.raises(NotCovered):
                    index.locate(lon, lat)
                with pytest.raises(NotCovered):
                    locate_sql(conn, lon, lat)
                continue
            inside += 1
            answer = index.locate(lon, lat)
            assert answer["unit"]["code"] == expected[0]
            assert answer["community"]["code"] == expected[0][:12] + "00"
            assert answer["street"]["code"] == expected[0][:9] + "00000"
            assert answer["district"]["code"] == expected[0][:6] + "00000000"
            assert locate_sql(conn, lon, lat)["unit"]["code"] == expected[0]
    assert 100 < inside < 300  # the sample really exercised both branches


def test_bulk_routing_matches_single_lookups(units, index):
    lons, lats = random_points(units, 2000, seed=11)
    routed = index.route_points(lons, lats)
    for lon, lat, code in zip(lons[:300], lats[:300], routed[:300]):
        expected = expected_owner(units, lon, lat)
        assert code == (expected[0] if expected else None)
    assert (routed != None).sum() > 500  # noqa: E711 (element-wise)


def shared_vertex(units):
    """A vertex shared by at least two unit grids (exactly representable: a real edge point)."""
    counts: dict = {}
    for code, geom in zip(units.code, units.geometry):
        for xy in shapely.get_coordinates(geom.boundary):
            counts.setdefault(tuple(xy), set()).add(code)
    for xy, codes in counts.items():
        if len(codes) >= 2:
            return xy, sorted(codes)
    raise AssertionError("no shared vertex in the test city")


def test_point_on_shared_edge_is_deterministic_and_flagged(units, index, client, engine):
    (lon, lat), codes = shared_vertex(units)
    lon, lat = float(lon), float(lat)
    answer = index.locate(lon, lat)
    assert answer["on_boundary"] is True
    assert answer["unit"]["code"] == codes[0]
    assert sorted(c["code"] for c in answer["candidates"]) == codes[1:]
    with engine.connect() as conn:
        sql_answer = locate_sql(conn, lon, lat)
    assert sql_answer["unit"]["code"] == codes[0] and sql_answer["on_boundary"] is True
    response = client.get(f"/api/v1/locate?lon={lon!r}&lat={lat!r}")
    assert response.status_code == 200
    assert response.json["unit"]["code"] == codes[0]
    assert response.json["on_boundary"] is True


def test_interior_point_is_not_flagged_and_lists_workers(units, client):
    geom = units.geometry.iloc[0]
    pt = geom.representative_point()
    body = client.get(f"/api/v1/locate?lon={pt.x}&lat={pt.y}").json
    assert body["unit"]["code"] == units.code.iloc[0]
    assert body["on_boundary"] is False and body["candidates"] == []
    roles = {w["role"] for w in body["workers"]}
    assert "grid_admin" in roles
    assert body["workers"][0]["responsible"] is True


def test_uncovered_point_is_404_not_covered(client):
    response = client.get("/api/v1/locate?lon=0&lat=0")
    assert response.status_code == 404
    assert response.json["error"] == "not_covered"


@pytest.mark.parametrize("query,field", [
    ("", "lon"), ("lon=116.3", "lat"), ("lon=abc&lat=39.9", "lon"),
    ("lon=116.3&lat=north", "lat"), ("lon=200&lat=39.9", "lon"), ("lon=116.3&lat=-91", "lat"),
    ("lon=nan&lat=39.9", "lon"), ("lon=116.3&lat=39.9&at=yesterday", "at"),
])
def test_bad_coordinates_are_400_naming_the_field(client, query, field):
    response = client.get(f"/api/v1/locate?{query}")
    assert response.status_code == 400
    assert response.json["field"] == field
    assert response.json["error"] == "invalid_parameter"


def test_at_timestamp_uses_grids_valid_then(units, client):
    pt = units.geometry.iloc[3].representative_point()
    now = client.get(f"/api/v1/locate?lon={pt.x}&lat={pt.y}&at="
                     f"{datetime.now(timezone.utc).isoformat()}".replace("+", "%2B"))
    assert now.status_code == 200 and now.json["unit"]["code"] == units.code.iloc[3]
    before = (datetime.now(timezone.utc) - timedelta(days=3650)).date().isoformat()
    then = client.get(f"/api/v1/locate?lon={pt.x}&lat={pt.y}&at={before}")
    assert then.status_code == 404 and then.json["error"] == "not_covered"


def test_cache_rebuilds_when_assignments_change(engine, units):
    cache = GridIndexCache(ttl=0)
    pt = units.geometry.iloc[1].representative_point()
    code = units.code.iloc[1]
    before = cache.get(engine).locate(pt.x, pt.y)["workers"]
    with engine.begin() as conn:
        wid = conn.execute(text(
            "INSERT INTO workers (name, role, phone) VALUES ('测试员', 'volunteer', '13900000000') "
            "RETURNING id")).scalar_one()
        conn.execute(text("INSERT INTO worker_grids (worker_id, grid_code) VALUES (:w, :c)"),
                     {"w": wid, "c": code})
    try:
        after = cache.get(engine).locate(pt.x, pt.y)["workers"]
        assert len(after) == len(before) + 1
        assert any(w["name"] == "测试员" for w in after)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM workers WHERE id = :w"), {"w": wid})
    assert len(cache.get(engine).locate(pt.x, pt.y)["workers"]) == len(before)

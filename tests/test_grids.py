"""Grid listing and detail: RFC 7946 GeoJSON, filters, statistics, errors."""
from __future__ import annotations

import pytest
import shapely
from shapely.geometry import shape
from sqlalchemy import text


def db_count(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


@pytest.mark.parametrize("level", ["district", "street", "community", "unit"])
def test_list_by_level_is_geojson(client, engine, level):
    response = client.get(f"/api/v1/grids?level={level}")
    assert response.status_code == 200
    assert response.mimetype == "application/geo+json"
    fc = response.json
    assert fc["type"] == "FeatureCollection" and "crs" not in fc  # RFC 7946: no crs member
    expected = db_count(engine, "SELECT count(*) FROM grids WHERE level = :l "
                                "AND valid_to IS NULL", l=level)
    assert len(fc["features"]) == expected > 0
    for feature in fc["features"]:
        assert feature["type"] == "Feature" and feature["id"] == feature["properties"]["code"]
        geom = shape(feature["geometry"])
        assert geom.geom_type == "MultiPolygon" and geom.is_valid
        minx, miny, maxx, maxy = geom.bounds
        assert 116 < minx < maxx < 117 and 39.5 < miny < maxy < 40.5  # lon, lat order
        assert feature["properties"]["level"] == level
        assert len(feature["properties"]["code"]) == 14
        assert feature["properties"]["area_m2"] > 0


def test_parent_filter_and_nesting(client):
    communities = client.get("/api/v1/grids?level=community").json["features"]
    code = communities[0]["id"]
    units = client.get(f"/api/v1/grids?parent={code}").json["features"]
    assert units and all(f["properties"]["parent_code"] == code for f in units)
    assert all(f["id"].startswith(code[:12]) for f in units)
    parent_geom = shape(communities[0]["geometry"])
    union = shapely.union_all([shape(f["geometry"]) for f in units])
    assert union.symmetric_difference(parent_geom).area < 1e-12


def test_statistics_roll_up(client, engine):
    units = client.get("/api/v1/grids?level=unit&stats=true").json["features"]
    total_households = db_count(engine, "SELECT count(*) FROM households")
    assert sum(f["properties"]["household_count"] for f in units) == total_households
    community = client.get(f"/api/v1/grids/{units[0]['properties']['parent_code']}").json
    members = [f for f in units
               if f["properties"]["parent_code"] == community["id"]]
    assert community["properties"]["household_count"] == sum(
        f["properties"]["household_count"] for f in members)
    assert community["properties"]["building_count"] == sum(
        f["properties"]["building_count"] for f in members)
    assert any(w["role"] == "grid_admin" for w in units[0]["properties"]["workers"])


def test_detail_and_errors(client):
    unit = client.get("/api/v1/grids?level=unit").json["features"][0]
    detail = client.get(f"/api/v1/grids/{unit['id']}")
    assert detail.status_code == 200 and detail.json["id"] == unit["id"]
    missing = client.get("/api/v1/grids/99999999999999")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    bad = client.get("/api/v1/grids/12ab")
    assert bad.status_code == 400 and bad.json["field"] == "code"
    assert client.get("/api/v1/grids?level=planet").json["field"] == "level"
    assert client.get("/api/v1/grids?parent=x").json["field"] == "parent"

"""Buildings: bbox GeoJSON and the building → household → member drill-down (masked)."""
from __future__ import annotations

import re

import pytest
from shapely.geometry import box, shape
from sqlalchemy import text


@pytest.fixture(scope="module")
def extent(engine):
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
            "FROM (SELECT ST_Extent(geom)::geometry AS e FROM buildings) q")).one()


def test_bbox_returns_exactly_the_intersecting_buildings(client, engine, extent):
    minx, miny, maxx, maxy = extent
    half = (minx, miny, (minx + maxx) / 2, (miny + maxy) / 2)
    with engine.connect() as conn:
        expected = set(conn.execute(text(
            "SELECT id FROM buildings WHERE ST_Intersects(geom, "
            "ST_MakeEnvelope(:a, :b, :c, :d, 4326))"),
            dict(zip("abcd", half))).scalars())
    body = client.get("/api/v1/buildings?bbox=" + ",".join(map(str, half))).json
    got = {f["id"] for f in body["features"]}
    assert got == expected and len(got) > 0
    assert body["numberMatched"] == len(expected) == body["numberReturned"]
    query_box = box(*half)
    assert all(shape(f["geometry"]).intersects(query_box) for f in body["features"])


def test_bbox_paging(client, extent):
    bbox = ",".join(map(str, extent))
    first = client.get(f"/api/v1/buildings?bbox={bbox}&limit=5").json
    second = client.get(f"/api/v1/buildings?bbox={bbox}&limit=5&offset=5").json
    assert len(first["features"]) == 5 == len(second["features"])
    assert not {f["id"] for f in first["features"]} & {f["id"] for f in second["features"]}


@pytest.mark.parametrize("query,field", [
    ("", "bbox"), ("bbox=1,2,3", "bbox"), ("bbox=a,b,c,d", "bbox"),
    ("bbox=117,40,116,39", "bbox"), ("bbox=116,39,117,95", "bbox"),
    ("bbox=116,39,117,40&limit=0", "limit"), ("bbox=116,39,117,40&limit=x", "limit"),
    ("bbox=116,39,117,40&offset=-1", "offset"),
])
def test_bbox_errors_name_the_field(client, query, field):
    response = client.get(f"/api/v1/buildings?{query}")
    assert response.status_code == 400 and response.json["field"] == field


def test_drill_down_is_masked(client, engine):
    with engine.connect() as conn:
        bid, households, persons = conn.execute(text("""
            SELECT b.id, count(DISTINCT h.id), count(p.id)
            FROM buildings b JOIN households h ON h.building_id = b.id
            JOIN persons p ON p.household_id = h.id
            GROUP BY b.id ORDER BY b.id LIMIT 1""")).one()
        raw_ids = set(conn.execute(text(
            "SELECT p.id_number FROM persons p JOIN households h ON h.id = p.household_id "
            "WHERE h.building_id = :b"), {"b": bid}).scalars())
    response = client.get(f"/api/v1/buildings/{bid}")
    assert response.status_code == 200
    props = response.json["properties"]
    assert props["personal_data"] == "masked"
    assert len(props["households"]) == households
    members = [m for h in props["households"] for m in h["members"]]
    assert len(members) == persons
    for m in members:
        assert re.fullmatch(r"\d{3}\*{11}[\dX]{4}", m["id_number"]), m["id_number"]
        assert m["id_number"] not in raw_ids
        assert m["phone"] is None or re.fullmatch(r"\d{3}\*{4}\d{4}", m["phone"])
        assert m["name"][1:] == "*" * (len(m["name"]) - 1)
    assert any(m["phone"] for m in members)
    heads = [m for h in props["households"] for m in h["members"] if m["relation"] == "户主"]
    assert len(heads) == households


def test_drill_down_errors(client):
    assert client.get("/api/v1/buildings/999999999").status_code == 404
    bad = client.get("/api/v1/buildings/abc")
    assert bad.status_code == 400 and bad.json["field"] == "id"

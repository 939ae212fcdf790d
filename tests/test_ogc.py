"""OGC API – Features: the spec's requirements (links, content types, 400s, paging, CRS), scope
and de-identification, against the session database."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from shapely.geometry import shape
from sqlalchemy import text

from gis_server.core import ogc

CRS84 = ogc.CRS84
EPSG4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
EPSG3857 = "http://www.opengis.net/def/crs/EPSG/0/3857"
EPSG4490 = "http://www.opengis.net/def/crs/EPSG/0/4490"


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture(scope="module")
def incidents(engine):
    """A few incidents (columns of migration 0001) with a reporter: personal data."""
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO incidents (category, description, geom, address, source, reporter,
                                   status, grid_id, reported_at)
            SELECT 'city_appearance', '门口堆放垃圾 张三家', ST_PointOnSurface(g.geom),
                   '某路1号', 'public', '张三 13800138000', 'reported', g.id,
                   timestamptz '2026-03-01 08:00+00' + (g.id || ' hours')::interval
            FROM grids g WHERE g.level = 'unit' AND g.valid_to IS NULL
        """))
        ids = [r[0] for r in conn.execute(text(
            "SELECT id FROM incidents WHERE reporter = '张三 13800138000' ORDER BY id"))]
    yield ids
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM incidents WHERE id = ANY(:ids)"), {"ids": ids})


def links(doc, rel):
    return [link for link in doc["links"] if link["rel"] == rel]


def test_landing_page_links(client):
    r = client.get("/ogc/")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.json
    for rel, mimetype in (("self", "application/json"),
                          ("service-desc", "application/vnd.oai.openapi+json;version=3.0"),
                          ("conformance", "application/json"), ("data", "application/json")):
        (link,) = links(doc, rel)
        assert link["type"] == mimetype
        target = client.get(urlparse(link["href"]).path)
        assert target.status_code == 200, rel
    assert client.get("/ogc").status_code in (301, 308)


def test_conformance_and_openapi(client):
    classes = client.get("/ogc/conformance").json["conformsTo"]
    for c in ("core", "geojson", "oas30"):
        assert f"http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/{c}" in classes
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in classes
    r = client.get("/ogc/api")
    assert r.headers["Content-Type"].startswith("application/vnd.oai.openapi+json")
    doc = r.json
    assert doc["openapi"].startswith("3.0")
    for cid in ogc.collections():
        items = doc["paths"][f"/collections/{cid}/items"]["get"]
        names = {p["name"] for p in items["parameters"]}
        assert {"limit", "bbox", "crs", "bbox-crs"} <= names
        limit = next(p for p in items["parameters"] if p["name"] == "limit")
        assert limit["schema"]["maximum"] == ogc.MAX_LIMIT


def test_collections_list_every_layer_with_crs(client):
    doc = client.get("/ogc/collections").json
    ids = {c["id"] for c in doc["collections"]}
    assert {"grids_district", "grids_street", "grids_community", "grids_unit", "buildings",
            "facilities", "incidents", "worker_positions", "positions"} <= ids
    for c in doc["collections"]:
        assert c["itemType"] == "feature"
        assert CRS84 in c["crs"] and EPSG3857 in c["crs"] and EPSG4490 in c["crs"]
        assert c["storageCrs"] == CRS84
        assert len(c["extent"]["spatial"]["bbox"][0]) == 4
        items = {link["type"]: link["href"] for link in links(c, "items")}
        assert set(items) == {"application/geo+json", "application/flatgeobuf"}
        assert items["application/flatgeobuf"].endswith("/items?f=fgb")
    one = client.get("/ogc/collections/buildings").json
    assert one["id"] == "buildings" and links(one, "self")
    assert client.get("/ogc/collections/nope").status_code == 404


def test_items_are_geojson_with_counts_and_match_the_database(client, engine):
    r = client.get("/ogc/collections/buildings/items?limit=10000")
    assert r.status_code == 200 and r.mimetype == "application/geo+json"
    assert r.headers["Content-Crs"] == f"<{CRS84}>"
    doc = r.json
    total = scalar(engine, "SELECT count(*) FROM buildings")
    assert doc["type"] == "FeatureCollection"
    assert doc["numberMatched"] == doc["numberReturned"] == len(doc["features"]) == total
    assert links(doc, "self") and not links(doc, "next")
    first = doc["features"][0]
    wkt = scalar(engine, "SELECT ST_AsText(geom) FROM buildings WHERE id = :i", i=first["id"])
    from shapely import wkt as shapely_wkt
    assert shape(first["geometry"]).equals_exact(shapely_wkt.loads(wkt), 1e-6)
    assert set(first["properties"]) == {"id", "name", "address", "floors", "use", "grid_code",
                                         "household_count", "resident_count"}


def test_paging_follows_next_links_to_every_feature(client, engine):
    seen, pages = [], 0
    url = "/ogc/collections/buildings/items?limit=30"
    while url:
        doc = client.get(url).json
        pages += 1
        assert doc["numberReturned"] == len(doc["features"]) <= 30
        seen += [f["id"] for f in doc["features"]]
        nxt = links(doc, "next")
        url = (urlparse(nxt[0]["href"]).path + "?" + urlparse(nxt[0]["href"]).query) \
            if nxt else None
        if nxt:
            assert parse_qs(urlparse(nxt[0]["href"]).query)["limit"] == ["30"]
    total = scalar(engine, "SELECT count(*) FROM buildings")
    assert sorted(seen) == seen and len(set(seen)) == len(seen) == total
    assert pages == -(-total // 30)
    # offset paging for generic clients gives the same slices
    doc = client.get("/ogc/collections/buildings/items?limit=30&offset=30").json
    assert [f["id"] for f in doc["features"]] == seen[30:60]


def test_limit_is_clamped_not_refused(client):
    doc = client.get(f"/ogc/collections/grids_unit/items?limit={ogc.MAX_LIMIT * 10}").json
    assert doc["numberReturned"] == doc["numberMatched"]
    assert client.get("/ogc/collections/grids_unit/items?limit=0").status_code == 400


@pytest.mark.parametrize("query, field", [
    ("foo=1", "foo"), ("limit=abc", "limit"), ("bbox=1,2,3", "bbox"),
    ("bbox=a,b,c,d", "bbox"), ("crs=EPSG:9999", "crs"), ("bbox-crs=http://x", "bbox-crs"),
    ("datetime=yesterday", "datetime"), ("cursor=zzz", "cursor"), ("f=xml", "f"),
    ("bbox=0,0,1,1&bbox-crs=http://www.opengis.net/def/crs/EPSG/0/4326&crs=nope", "crs"),
])
def test_bad_or_unknown_parameters_are_400_naming_them(client, query, field):
    r = client.get(f"/ogc/collections/buildings/items?{query}")
    assert r.status_code == 400 and r.json["field"] == field, r.json
    assert client.get("/ogc/collections?bogus=1").json["field"] == "bogus"
    assert client.get("/ogc/?bogus=1").status_code == 400
    assert client.get("/ogc/collections/buildings/items/1?bogus=1").status_code == 400


def test_datetime_on_a_collection_without_time_is_400(client):
    r = client.get("/ogc/collections/buildings/items?datetime=2026-03-01T00:00:00Z")
    assert r.status_code == 400 and r.json["field"] == "datetime"


def test_bbox_in_every_crs_selects_the_same_features(client, engine):
    minx, miny, maxx, maxy = (scalar(engine, f"SELECT ST_{f}(ST_Extent(geom)) FROM buildings "
                                             "WHERE id <= 40") for f in
                              ("XMin", "YMin", "XMax", "YMax"))
    want = {r for r in (scalar(engine, """
        SELECT array_agg(id ORDER BY id) FROM buildings
        WHERE ST_Intersects(geom, ST_MakeEnvelope(:a, :b, :c, :d, 4326))""",
                                a=minx, b=miny, c=maxx, d=maxy))}
    assert 40 <= len(want) < 128
    (mx0, my0), (mx1, my1) = (
        [float(v) for v in scalar(engine, "SELECT ST_X(p) || ',' || ST_Y(p) FROM ST_Transform("
                                          "ST_SetSRID(ST_MakePoint(:x, :y), 4326), 3857) p",
                                  x=x, y=y).split(",")] for x, y in ((minx, miny), (maxx, maxy)))
    cases = [
        f"bbox={minx},{miny},{maxx},{maxy}",
        f"bbox={miny},{minx},{maxy},{maxx}&bbox-crs={EPSG4326}",
        f"bbox={miny},{minx},{maxy},{maxx}&bbox-crs={EPSG4490}",
        f"bbox={mx0},{my0},{mx1},{my1}&bbox-crs={EPSG3857}",
    ]
    for query in cases:
        doc = client.get(f"/ogc/collections/buildings/items?limit=1000&{query}").json
        got = {f["id"] for f in doc["features"]}
        # a bbox transformed to lon/lat may differ by rounding along its edges only
        assert len(got ^ want) <= 2 and doc["numberMatched"] == len(got), query


def test_crs_changes_coordinates_and_axis_order(client, engine):
    fid = scalar(engine, "SELECT min(id) FROM buildings")
    x, y = (scalar(engine, f"SELECT ST_{a}(ST_StartPoint(ST_ExteriorRing(ST_GeometryN(geom, 1))))"
                           " FROM buildings WHERE id = :i", i=fid) for a in ("X", "Y"))

    def first_point(crs):
        r = client.get(f"/ogc/collections/buildings/items/{fid}" + (f"?crs={crs}" if crs else ""))
        assert r.status_code == 200 and r.headers["Content-Crs"] == f"<{crs or CRS84}>"
        return r.json["geometry"]["coordinates"][0][0][0]

    assert first_point(None) == pytest.approx([x, y], abs=1e-7)
    assert first_point(EPSG4326) == pytest.approx([y, x], abs=1e-7)  # lat, lon
    lat, lon = first_point(EPSG4490)
    assert (lon, lat) == pytest.approx((x, y), abs=1e-5)
    mx, my = first_point(EPSG3857)
    assert mx == pytest.approx(x * 20037508.342789244 / 180, abs=0.05)
    assert 4.0e6 < my < 6.0e6
    doc = client.get(f"/ogc/collections/buildings/items?limit=1&crs={EPSG3857}")
    assert doc.headers["Content-Crs"] == f"<{EPSG3857}>"


def test_property_filters(client, engine):
    use = scalar(engine, "SELECT use FROM buildings GROUP BY use ORDER BY count(*) DESC LIMIT 1")
    doc = client.get(f"/ogc/collections/buildings/items?use={use}&limit=1000").json
    assert doc["numberMatched"] == scalar(engine, "SELECT count(*) FROM buildings WHERE use = :u",
                                          u=use)
    assert {f["properties"]["use"] for f in doc["features"]} == {use}
    community = scalar(engine, "SELECT min(code) FROM grids WHERE level = 'community'")
    doc = client.get(f"/ogc/collections/grids_unit/items?parent_code={community}").json
    assert doc["numberMatched"] > 0
    assert {f["properties"]["parent_code"] for f in doc["features"]} == {community}
    assert client.get("/ogc/collections/buildings/items?floors=x").json["field"] == "floors"


def test_grids_at_a_time_and_by_level(client, engine):
    for level in ("district", "street", "community", "unit"):
        doc = client.get(f"/ogc/collections/grids_{level}/items").json
        assert doc["numberMatched"] == scalar(
            engine, "SELECT count(*) FROM grids WHERE level = :l AND valid_to IS NULL", l=level)
    before = client.get("/ogc/collections/grids_unit/items?datetime=1990-01-01T00:00:00Z").json
    assert before["numberMatched"] == 0
    now = client.get("/ogc/collections/grids_unit/items?datetime=2100-01-01T00:00:00Z/..").json
    assert now["numberMatched"] == scalar(
        engine, "SELECT count(*) FROM grids WHERE level = 'unit' AND valid_to IS NULL")


def test_items_by_id_and_404(client, engine):
    fid = scalar(engine, "SELECT max(id) FROM buildings")
    r = client.get(f"/ogc/collections/buildings/items/{fid}")
    assert r.status_code == 200 and r.mimetype == "application/geo+json"
    assert r.json["id"] == fid and links(r.json, "self") and links(r.json, "collection")
    assert client.get(f"/ogc/collections/buildings/items/{fid + 1000}").status_code == 404
    assert client.get("/ogc/collections/buildings/items/abc").status_code == 404


def test_scope_limits_items(client_as, engine, accounts):
    community = accounts["community_admin"]["scope"]
    doc = client_as("community_admin").get("/ogc/collections/buildings/items?limit=1000").json
    want = scalar(engine, "SELECT count(*) FROM buildings b JOIN grids u ON u.id = b.grid_id "
                          "WHERE u.code LIKE :p", p=community[:12] + "%")
    assert doc["numberMatched"] == len(doc["features"]) == want < 128
    outside = scalar(engine, "SELECT min(b.id) FROM buildings b JOIN grids u ON u.id = b.grid_id "
                             "WHERE u.code NOT LIKE :p", p=community[:12] + "%")
    assert client_as("community_admin").get(
        f"/ogc/collections/buildings/items/{outside}").status_code == 404


def test_incidents_temporal_filter(client, engine, incidents):
    doc = client.get("/ogc/collections/incidents/items?limit=1000").json
    assert doc["numberMatched"] >= len(incidents)
    start = scalar(engine, "SELECT min(reported_at) FROM incidents WHERE id = ANY(:i)",
                   i=incidents)
    want = scalar(engine, "SELECT count(*) FROM incidents WHERE reported_at BETWEEN :s "
                          "AND :s + interval '5 hours'", s=start)
    window = f"{start.isoformat()}/{(start + timedelta(hours=5)).isoformat()}"
    doc = client.get("/ogc/collections/incidents/items",
                     query_string={"datetime": window, "limit": 1000}).json
    assert 0 < doc["numberMatched"] == want == len(doc["features"]) < len(incidents)
    for f in doc["features"]:
        at = datetime.fromisoformat(f["properties"]["reported_at"])
        assert start <= at <= start + timedelta(hours=5)
    open_end = client.get("/ogc/collections/incidents/items",
                          query_string={"datetime": f"../{start.isoformat()}"}).json
    assert open_end["numberMatched"] == scalar(
        engine, "SELECT count(*) FROM incidents WHERE reported_at <= :s", s=start)


def test_personal_fields_follow_the_mode(client_as, incidents):
    fid = incidents[0]
    analyst = client_as("analyst").get("/ogc/collections/incidents/items?limit=1000")
    body = analyst.get_data(as_text=True)
    assert analyst.status_code == 200
    for feature in analyst.json["features"]:
        assert not {"reporter", "address", "description"} & set(feature["properties"])
    assert "张三" not in body and "13800138000" not in body and "某路" not in body
    one = client_as("analyst").get(f"/ogc/collections/incidents/items/{fid}").get_data(
        as_text=True)
    assert "张三" not in one and "reporter" not in one
    masked = client_as("planner").get(f"/ogc/collections/incidents/items/{fid}").json
    assert masked["properties"]["reporter"].startswith("张*") and \
        "13800138000" not in json.dumps(masked, ensure_ascii=False)
    unmasked = client_as("command_center").get(f"/ogc/collections/incidents/items/{fid}").json
    assert unmasked["properties"]["reporter"] == "张三 13800138000"


def test_unmasked_reads_are_audited(client_as, engine, incidents):
    before = scalar(engine, "SELECT count(*) FROM audit_log WHERE action = 'read_personal' "
                            "AND object_type = 'incidents'")
    client_as("command_center").get("/ogc/collections/incidents/items?limit=5")
    after = scalar(engine, "SELECT count(*) FROM audit_log WHERE action = 'read_personal' "
                           "AND object_type = 'incidents'")
    assert after == before + 1


def test_reporter_and_anonymous_are_refused(client_as):
    assert client_as(None).get("/ogc/collections").status_code == 401
    assert client_as("reporter").get("/ogc/collections/buildings/items").status_code == 403


# --- FlatGeobuf encoding (f=fgb) ----------------------------------------------------------

def read_fgb(data: bytes):
    import io

    import pyogrio
    return pyogrio.read_dataframe(io.BytesIO(data))


def next_link(response) -> str | None:
    for part in response.headers.get("Link", "").split(","):
        if 'rel="next"' in part:
            return part.split(";")[0].strip().strip("<>")
    return None


def test_fgb_page_matches_the_geojson_page(client, engine):
    url = "/ogc/collections/buildings/items?limit=40"
    geo = client.get(url).json
    r = client.get(url + "&f=fgb")
    assert r.status_code == 200 and r.mimetype == "application/flatgeobuf"
    assert r.headers["Content-Crs"] == f"<{CRS84}>"
    assert int(r.headers["OGC-NumberMatched"]) == geo["numberMatched"] == scalar(
        engine, "SELECT count(*) FROM buildings")
    assert int(r.headers["OGC-NumberReturned"]) == 40
    df = read_fgb(r.data)
    assert list(df["fid"]) == [f["id"] for f in geo["features"]]
    assert set(df.columns) == set(geo["features"][0]["properties"]) | {"fid", "geometry"}
    for (_, row), feature in zip(df.iterrows(), geo["features"]):
        for name, value in feature["properties"].items():
            assert row[name] == value, name
        assert row.geometry.equals_exact(shape(feature["geometry"]), 1e-7)
    # the next link keeps f=fgb and leads to the same second page as GeoJSON's
    nxt = next_link(r)
    assert "f=fgb" in nxt and "cursor=" in nxt
    geo_next = next(link["href"] for link in geo["links"] if link["rel"] == "next")
    second = read_fgb(client.get(nxt).data)
    assert list(second["fid"]) == [f["id"] for f in client.get(geo_next).json["features"]]


def test_fgb_pages_follow_links_to_every_feature(client, engine):
    url, seen = "/ogc/collections/grids_unit/items?f=fgb&limit=7", []
    while url:
        r = client.get(url)
        seen += list(read_fgb(r.data)["fid"])
        url = next_link(r)
    want = [r[0] for r in engine.connect().execute(text(
        "SELECT id FROM grids WHERE level = 'unit' AND valid_to IS NULL ORDER BY id"))]
    assert seen == want


def test_fgb_empty_page_and_bad_format(client):
    r = client.get("/ogc/collections/incidents/items?f=fgb&bbox=0,0,0.001,0.001")
    assert r.status_code == 200 and r.headers["OGC-NumberMatched"] == "0"
    df = read_fgb(r.data)
    assert df.empty and "category" in df.columns
    assert client.get("/ogc/collections/buildings/items?f=xml").json["field"] == "f"
    assert client.get("/ogc/?f=fgb").json["field"] == "f"


def test_fgb_follows_the_personal_mode(client_as, incidents):
    url = "/ogc/collections/incidents/items?limit=1000&f=fgb"
    analyst = read_fgb(client_as("analyst").get(url).data)
    assert len(analyst) >= len(incidents)
    assert not {"reporter", "address", "description"} & set(analyst.columns)
    assert "张三" not in client_as("analyst").get(url).get_data().decode("utf-8", "replace")
    for role in ("admin", "command_center"):  # the same (masked or not) values as GeoJSON
        got = read_fgb(client_as(role).get(url).data)
        geo = client_as(role).get(url.replace("&f=fgb", "")).json["features"]
        want = [f["properties"]["reporter"] for f in geo]
        assert [None if isinstance(v, float) else v for v in got["reporter"]] == want
        assert any(want)  # the fixture's incidents carry a reporter

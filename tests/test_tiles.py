"""Vector tiles: decoded with mapbox-vector-tile and compared with the database; caching
headers; the tile map page in headless chromium, offline."""
from __future__ import annotations

import math

import mapbox_vector_tile
import pytest
from sqlalchemy import text


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 1 << z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


@pytest.fixture(scope="module")
def centre(engine):
    (lon, lat), = rows(engine, "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(ST_Extent(geom)"
                               "::geometry) c FROM buildings) s")
    return lon, lat


def decode(data: bytes) -> dict:
    return mapbox_vector_tile.decode(data)


def test_building_tile_holds_the_buildings_it_covers(client, engine, centre):
    z = 16
    x, y = tile_of(*centre, z)
    r = client.get(f"/tiles/buildings/{z}/{x}/{y}.mvt")
    assert r.status_code == 200 and r.mimetype == "application/vnd.mapbox-vector-tile"
    layer = decode(r.data)["buildings"]
    got = {f["properties"]["fid"] if "fid" in f["properties"] else f["id"]
           for f in layer["features"]}
    want = {row[0] for row in rows(engine, """
        SELECT id FROM buildings
        WHERE ST_Intersects(ST_Transform(geom, 3857),
                            ST_TileEnvelope(:z, :x, :y, margin => 64.0 / 4096))""",
                                   z=z, x=x, y=y)}
    assert want and got == want
    feature = layer["features"][0]
    assert set(feature["properties"]) >= {"floors", "use", "grid_code"}
    assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert layer["extent"] == 4096


def test_unit_grid_tile_and_simplification(client, engine, centre):
    units = {r[0] for r in rows(engine, "SELECT code FROM grids WHERE level = 'unit' "
                                        "AND valid_to IS NULL")}
    x, y = tile_of(*centre, 10)
    layer = decode(client.get(f"/tiles/grids_unit/10/{x}/{y}.mvt").data)["grids_unit"]
    codes = {f["properties"]["code"] for f in layer["features"]}
    assert codes <= units and len(codes) >= len(units) // 2
    assert all(f["properties"]["level"] == "unit" for f in layer["features"])
    # simplified at low zooms: grids smaller than a pixel collapse, the tile shrinks
    def size(z):
        tx, ty = tile_of(*centre, z)
        return len(client.get(f"/tiles/grids_unit/{z}/{tx}/{ty}.mvt").data)
    assert size(5) < size(10) < size(16) * 4


def test_below_min_zoom_the_tile_is_empty(client, centre):
    x, y = tile_of(*centre, 8)
    r = client.get(f"/tiles/buildings/8/{x}/{y}.mvt")
    assert r.status_code == 200 and r.data == b""


def test_etag_cache_control_and_304(client, centre):
    x, y = tile_of(*centre, 16)
    url = f"/tiles/buildings/16/{x}/{y}.mvt"
    r = client.get(url)
    tag = r.headers["ETag"]
    assert tag.startswith('"') and "max-age" in r.headers["Cache-Control"]
    again = client.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.data == b""
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("url, status, field", [
    ("/tiles/buildings/3/8/0.mvt", 400, "x"), ("/tiles/buildings/3/0/8.mvt", 400, "y"),
    ("/tiles/buildings/23/0/0.mvt", 400, "z"), ("/tiles/nope/1/0/0.mvt", 404, None),
    ("/tiles/buildings/1/0/0.mvt?x=1", 400, "x"),
])
def test_bad_tiles(client, url, status, field):
    r = client.get(url)
    assert r.status_code == status and r.json.get("field") == field


def test_tiles_respect_scope_and_personal_mode(client_as, engine, accounts, centre):
    scope = accounts["grid_worker"]["scope"]
    x, y = tile_of(*centre, 16)
    layer = decode(client_as("grid_worker").get(f"/tiles/buildings/16/{x}/{y}.mvt").data)
    codes = {f["properties"]["grid_code"] for f in layer.get("buildings", {"features": []})[
        "features"]}
    assert codes <= {scope}
    # density tiles count only the buildings in scope
    x, y = tile_of(*centre, 12)
    layer = decode(client_as("grid_worker").get(f"/tiles/buildings/12/{x}/{y}.mvt").data)
    counted = sum(f["properties"]["count"] for f in layer.get("buildings", {"features": []})[
        "features"])
    (want,), = rows(engine, "SELECT count(*) FROM buildings b JOIN grids u ON u.id = b.grid_id "
                            "WHERE u.code LIKE :p AND ST_Intersects(ST_Transform(b.anchor, 3857),"
                            " ST_TileEnvelope(12, :x, :y))", p=scope + "%", x=x, y=y)
    assert counted == want
    assert client_as(None).get(f"/tiles/buildings/12/{x}/{y}.mvt").status_code == 401


def density(client, z, x, y) -> list[dict]:
    r = client.get(f"/tiles/buildings/{z}/{x}/{y}.mvt")
    assert r.status_code == 200
    return decode(r.data).get("buildings", {"features": []})["features"]


@pytest.mark.parametrize("z", [12, 13, 14])
def test_density_tiles_count_the_buildings_of_the_tile(client, engine, centre, z):
    """z12-z14: points on a 64-unit grid whose counts add up to the tile's buildings."""
    x, y = tile_of(*centre, z)
    features = density(client, z, x, y)
    assert features and all(f["geometry"]["type"] == "Point" for f in features)
    assert all(set(f["properties"]) == {"count"} and f["properties"]["count"] > 0
               for f in features)
    (want,), = rows(engine, "SELECT count(*) FROM buildings WHERE ST_Intersects("
                            "ST_Transform(anchor, 3857), ST_TileEnvelope(:z, :x, :y))",
                    z=z, x=x, y=y)
    assert sum(f["properties"]["count"] for f in features) == want
    # one point per cell, at the cell's centre (mapbox-vector-tile flips y: origin bottom-left)
    cells = [tuple(f["geometry"]["coordinates"]) for f in features]
    assert len(set(cells)) == len(cells)
    assert all(cx % 64 == 32 and cy % 64 == 32 for cx, cy in cells)
    # the four tiles of the next zoom hold the same buildings
    if z < 14:
        below = sum(f["properties"]["count"] for dx in (0, 1) for dy in (0, 1)
                    for f in density(client, z + 1, 2 * x + dx, 2 * y + dy))
        assert below == want


def test_density_follows_building_writes(client, engine, centre):
    """The triggers keep building_density exact through insert, update, delete (rolled back
    by deleting the row again)."""
    z = 14
    x, y = tile_of(*centre, z)
    before = sum(f["properties"]["count"] for f in density(client, z, x, y))
    lon, lat = centre
    with engine.begin() as conn:
        bid = conn.execute(text("""
            INSERT INTO buildings (geom, anchor, floors, use, grid_id)
            SELECT ST_Multi(ST_Buffer(ST_Point(:lon, :lat, 4326), 0.00005, 1)),
                   ST_Point(:lon, :lat, 4326), 3, 'residential', grid_id
            FROM buildings ORDER BY anchor <-> ST_Point(:lon, :lat, 4326) LIMIT 1
            RETURNING id"""), {"lon": lon, "lat": lat}).scalar_one()
    try:
        assert sum(f["properties"]["count"] for f in density(client, z, x, y)) == before + 1
        with engine.begin() as conn:  # moved far away: out of this tile
            conn.execute(text("UPDATE buildings SET anchor = ST_Point(0, 0, 4326), "
                              "geom = ST_Multi(ST_Buffer(ST_Point(0, 0, 4326), 0.00005, 1)) "
                              "WHERE id = :i"), {"i": bid})
        assert sum(f["properties"]["count"] for f in density(client, z, x, y)) == before
        (n,), = rows(engine, "SELECT n FROM building_density WHERE geom && "
                             "ST_Transform(ST_MakeEnvelope(-0.001, -0.001, 0.001, 0.001, 4326), "
                             "3857)")
        assert n == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM buildings WHERE id = :i"), {"i": bid})
    (total,), = rows(engine, "SELECT count(*) FROM buildings")
    (summed,), = rows(engine, "SELECT sum(n) FROM building_density")
    assert summed == total
    assert not rows(engine, "SELECT 1 FROM building_density WHERE geom && ST_Transform("
                            "ST_MakeEnvelope(-0.001, -0.001, 0.001, 0.001, 4326), 3857)")


def test_footprints_from_z15_use_the_stored_mercator_geometry(client, engine, centre):
    x, y = tile_of(*centre, 15)
    layer = decode(client.get(f"/tiles/buildings/15/{x}/{y}.mvt").data)["buildings"]
    assert layer["features"] and all(f["geometry"]["type"] in ("Polygon", "MultiPolygon")
                                     for f in layer["features"])
    (same,), = rows(engine, "SELECT bool_and(ST_Equals(geom_3857, ST_Transform(geom, 3857))) "
                            "FROM buildings")
    assert same


def test_tile_queries_use_gist_indexes_under_row_level_security(engine, centre):
    """As gis_app (RLS on, whole city and a street), the tile filters use the GiST indexes."""
    x, y = tile_of(*centre, 14)
    (street,), = rows(engine, "SELECT code FROM grids WHERE level = 'street' LIMIT 1")
    queries = {
        "idx_buildings_geom_3857": "SELECT id FROM buildings b WHERE b.geom_3857 && "
                                   "ST_TileEnvelope(16, :x * 4, :y * 4)",
        "idx_building_density_geom": "SELECT n FROM building_density WHERE geom && "
                                     "ST_TileEnvelope(14, :x, :y)",
    }
    for scope in ("", street):
        with engine.begin() as conn:
            # seqscan off: the index is still avoided if RLS made it unusable (non-leakproof
            # predicates), so the plan shows whether it can be used; small test tables would
            # otherwise be scanned anyway.
            conn.execute(text("SELECT set_config('enable_seqscan', 'off', true), "
                              "set_config('role', 'gis_app', true), "
                              "set_config('gis.scope', 'scope:' || :s, true)"), {"s": scope})
            for index, sql in queries.items():
                plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql),
                                                            {"x": x, "y": y}))
                assert index in plan, plan
            conn.rollback()


@pytest.mark.browser
def test_tile_map_renders_offline(offline_page, live_server, engine, accounts):
    page = offline_page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_server}/maps/tiles")
    assert "/login" in page.url
    page.fill("#username", accounts["analyst"]["user"]["username"])
    page.fill("#password", accounts["analyst"]["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    tile_responses = []
    page.on("response", lambda r: tile_responses.append(r.status) if ".mvt" in r.url else None)
    response = page.goto(f"{live_server}/maps/tiles")
    assert response.status == 200
    page.wait_for_selector(".leaflet-container")
    page.wait_for_function("document.querySelectorAll('path.leaflet-interactive').length > 0",
                           timeout=20000)
    assert tile_responses and set(tile_responses) == {200}
    n_paths = page.locator("path.leaflet-interactive").count()
    units = rows(engine, "SELECT count(*) FROM grids WHERE level = 'unit' AND valid_to IS NULL")
    assert n_paths >= units[0][0]
    assert page.locator(".leaflet-control-layers-overlays label").count() == 4
    # At z12-14 buildings arrive as density points, drawn as circles (a closed arc path)
    page.evaluate("map.setZoom(14)")
    page.wait_for_function(
        "(() => { const l = window.tileLayers.buildings; if (!l) return false;"
        " return Object.values(l._vectorTiles).some(t => t._features &&"
        " Object.values(t._features).some(f => f.feature.properties.count > 0)); })()",
        timeout=20000)
    html = page.content()
    assert "FeatureCollection" not in html  # no inlined GeoJSON
    assert page.external_requests == [] and errors == []

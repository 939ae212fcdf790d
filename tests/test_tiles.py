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
    x, y = tile_of(*centre, 12)
    layer = decode(client_as("grid_worker").get(f"/tiles/buildings/12/{x}/{y}.mvt").data)
    codes = {f["properties"]["grid_code"] for f in layer.get("buildings", {"features": []})[
        "features"]}
    assert codes <= {scope}
    assert client_as(None).get(f"/tiles/buildings/12/{x}/{y}.mvt").status_code == 401


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
    html = page.content()
    assert "FeatureCollection" not in html  # no inlined GeoJSON
    assert page.external_requests == [] and errors == []

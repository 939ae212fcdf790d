"""A real OGC API – Features client: GDAL's OAPIF driver (Debian gdal-bin) against the live
server, on the ``demo`` synthetic city (3,000 buildings: paging past the first 1,000)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest
from helpers import dispose_database, fresh_database
from shapely import wkb
from shapely.geometry import shape
from sqlalchemy import text
from werkzeug.serving import make_server

from conftest import TEST_CONFIG
from gis_server import create_app
from gis_server.core import accounts as acc
from gis_server.db import engine_for

pytestmark = pytest.mark.skipif(shutil.which("ogr2ogr") is None,
                                reason="gdal-bin missing: bash scripts/install-system-deps.sh")


@pytest.fixture(scope="module")
def demo_server():
    from gis_server.loaders import synthetic
    name = f"gis_test_ogc_gdal_{os.getpid()}"
    url = fresh_database(name, synthetic.generate("demo", seed=1))
    app = create_app({**TEST_CONFIG, "DATABASE_URL": url})
    with engine_for(url).begin() as conn:
        user = acc.create_user(conn, "gdal_analyst", "analyst", None,
                               password="pw-analyst-0123456789")
        token, _ = acc.issue_token(conn, user["id"], app.config["TOKEN_PEPPER"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{server.server_port}/ogc", "token": token,
           "engine": engine_for(url)}
    server.shutdown()
    dispose_database(url, name)


def gdal(tool: str, server, *args) -> subprocess.CompletedProcess:
    argv = [tool, "--config", "GDAL_HTTP_HEADERS", f"Authorization: Bearer {server['token']}",
            "--config", "CPL_CURL_VERBOSE", "NO", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_ogrinfo_lists_the_collections(demo_server):
    out = gdal("ogrinfo", demo_server, "-ro", "-q", f"OAPIF:{demo_server['base']}")
    assert out.returncode == 0, out.stderr
    for name in ("buildings", "grids_unit", "facilities", "incidents", "worker_positions"):
        assert name in out.stdout


def test_ogrinfo_without_token_fails(demo_server):
    out = subprocess.run(["ogrinfo", "-ro", "-q", f"OAPIF:{demo_server['base']}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_ogr2ogr_copies_every_building_across_pages(demo_server, tmp_path):
    dest = tmp_path / "buildings.geojson"
    out = gdal("ogr2ogr", demo_server, "-f", "GeoJSON", str(dest),
               f"OAPIF:{demo_server['base']}", "buildings", "-oo", "PAGE_SIZE=1000")
    assert out.returncode == 0, out.stderr
    features = json.loads(dest.read_text())["features"]
    with demo_server["engine"].connect() as conn:
        db = {r.id: (r.use, wkb.loads(bytes(r.g))) for r in conn.execute(text(
            "SELECT id, use, ST_AsBinary(geom) AS g FROM buildings"))}
    assert len(db) == 3000
    got = {f["properties"]["id"]: f for f in features}
    assert len(features) == len(got) == len(db)  # 3 pages of 1,000, no duplicates
    for fid, (use, geom) in db.items():
        feature = got[fid]
        assert feature["properties"]["use"] == use
        assert shape(feature["geometry"]).equals_exact(geom, 1e-6)


def test_ogr2ogr_spatial_filter_is_sent_as_bbox(demo_server, tmp_path):
    with demo_server["engine"].connect() as conn:
        minx, miny, maxx, maxy = conn.execute(text(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
            "(SELECT ST_Extent(geom) e FROM grids WHERE level = 'community' "
            "AND valid_to IS NULL AND code = (SELECT min(code) FROM grids "
            "WHERE level = 'community')) s")).one()
        want = conn.execute(text(
            "SELECT count(*) FROM grids WHERE level = 'unit' AND valid_to IS NULL AND "
            "ST_Intersects(geom, ST_MakeEnvelope(:a, :b, :c, :d, 4326))"),
            {"a": minx, "b": miny, "c": maxx, "d": maxy}).scalar()
    dest = tmp_path / "units.geojson"
    out = gdal("ogr2ogr", demo_server, "-f", "GeoJSON", str(dest),
               f"OAPIF:{demo_server['base']}", "grids_unit",
               "-spat", str(minx), str(miny), str(maxx), str(maxy))
    assert out.returncode == 0, out.stderr
    features = json.loads(dest.read_text())["features"]
    # GDAL sends the bbox and then clips client side to the same rectangle
    assert 0 < len(features) <= want
    assert all(f["properties"]["level"] == "unit" for f in features)

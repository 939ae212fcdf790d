"""Import and export of grid layers (GeoJSON, GeoPackage, zipped Shapefile; any CRS), the
building → grid CSV, and the `gis-server grids` commands."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from click.testing import CliRunner
from sqlalchemy import text

from gis_server.core import gridio

FIXTURES = Path(__file__).parent / "fixtures"


def current_units(engine) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT g.code, p.code AS parent, ST_AsBinary(g.geom) AS wkb FROM grids g "
            "JOIN grids p ON p.id = g.parent_id WHERE g.level = 'unit' AND g.valid_to IS NULL"
        )).all()
    return {r.code: (r.parent, shapely.from_wkb(r.wkb)) for r in rows}


@pytest.mark.parametrize("fmt,suffix", [("geojson", ".geojson"), ("gpkg", ".gpkg"),
                                        ("shp", ".zip")])
def test_export_then_import_round_trips(client, engine, fmt, suffix):
    response = client.get(f"/api/v1/grids/export?level=unit&format={fmt}")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].endswith(f'{suffix}"')
    layer = gridio.read_layer(response.data, f"grids{suffix}")
    assert layer["format"] == fmt
    units = current_units(engine)
    assert {f["code"] for f in layer["features"]} == set(units)
    for f in layer["features"]:
        parent, geom = units[f["code"]]
        assert f["parent_code"] == parent
        assert shapely.hausdorff_distance(f["geometry"], geom) < 1e-7


def test_shapefile_zip_holds_the_parts(client):
    data = client.get("/api/v1/grids/export?format=shp").data
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {Path(n).suffix for n in names} >= {".shp", ".shx", ".dbf", ".prj"}


@pytest.mark.parametrize("crs", ["EPSG:4490", "EPSG:4548", "EPSG:3857"])
def test_import_reprojects_any_declared_crs(tmp_path, crs):
    src = gpd.read_file(FIXTURES / "valid.geojson")
    path = tmp_path / "layer.gpkg"
    src.to_crs(crs).to_file(path, driver="GPKG")
    layer = gridio.read_layer(path.read_bytes(), "layer.gpkg")
    assert crs.split(":")[1] in layer["crs"]
    for f, g in zip(layer["features"], src.geometry.values):
        # CGCS2000 and WGS84 agree to the centimetre; projected CRSs round-trip.
        assert shapely.hausdorff_distance(f["geometry"], g) < 1e-7
        assert f["parent_code"] == "11010890100100"


def test_export_in_cgcs2000(client):
    data = client.get("/api/v1/grids/export?format=gpkg&crs=EPSG:4490").data
    layer = gridio.read_layer(data, "x.gpkg")
    assert "4490" in layer["crs"]


def test_bad_files_are_400(client):
    for data, name in ((b"", "x.geojson"), (b"not a zip", "x.zip"), (b"{nope", "x.geojson"),
                       (b"hello", "x.txt")):
        with pytest.raises(Exception) as err:
            gridio.read_layer(data, name)
        assert getattr(err.value, "status", None) == 400
        assert err.value.field == "file"
    response = client.get("/api/v1/grids/export?format=kml")
    assert response.status_code == 400 and response.json["field"] == "format"
    response = client.get("/api/v1/grids/export?format=gpkg&crs=EPSG:999999")
    assert response.status_code == 400 and response.json["field"] == "crs"


def test_building_assignment_csv(client, engine):
    response = client.get("/api/v1/grids/assignments.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    with engine.connect() as conn:
        want = dict(conn.execute(text(
            "SELECT b.id::text, g.code FROM buildings b JOIN grids g ON g.id = b.grid_id")).all())
    assert {r["building_id"]: r["grid_code"] for r in rows} == want


def test_plan_import_over_the_api_and_csv_of_the_plan(client, engine):
    plan = client.post("/api/v1/plans", json={"name": "api import"}).json
    pid = plan["id"]
    data = client.get("/api/v1/grids/export?format=gpkg").data
    r = client.post(f"/api/v1/plans/{pid}/import",
                    data={"file": (io.BytesIO(data), "grids.gpkg")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    assert r.json["plan"]["grids"] == {"kept": 16, "changed": 0, "new": 0, "removed": 0}
    csv_text = client.get(f"/api/v1/grids/assignments.csv?plan={pid}").get_data(as_text=True)
    current = client.get("/api/v1/grids/assignments.csv").get_data(as_text=True)
    assert csv_text == current  # an unchanged plan assigns every building as today
    client.post(f"/api/v1/plans/{pid}/discard")


def test_cli_import_into_a_plan_and_export(database_url, engine, monkeypatch, tmp_path):
    from gis_server.cli import main
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    out = tmp_path / "units.geojson"
    result = runner.invoke(main, ["grids", "export", "--level", "unit", "-o", str(out)])
    assert result.exit_code == 0, result.output
    fc = json.loads(out.read_text())
    assert len(fc["features"]) == 16
    # Redraw: drop one grid's feature and shrink another (a gap, and a removed code).
    removed = fc["features"].pop(0)["properties"]["code"]
    shp = tmp_path / "units_shp.zip"
    gdf = gpd.GeoDataFrame.from_features(fc["features"], crs=4326)
    gdf.to_crs("EPSG:4490").to_file(tmp_path / "u.shp")
    with zipfile.ZipFile(shp, "w") as z:
        for part in tmp_path.glob("u.*"):
            z.write(part, part.name)
    result = runner.invoke(main, ["grids", "import", str(shp), "--level", "unit",
                                  "--plan", "cli redraw"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["plan"]["grids"]["removed"] == 1 and report["plan"]["grids"]["kept"] == 15
    assert "4490" in report["crs"]
    gaps = [p for p in report["problems"] if p["type"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["area_m2"] > 5000
    with engine.connect() as conn:
        status = conn.execute(text(
            "SELECT pg.status FROM plan_grids pg JOIN plans p ON p.id = pg.plan_id "
            "WHERE p.name = 'cli redraw' AND pg.code = :c"), {"c": removed}).scalar()
        pid = conn.execute(text("SELECT id FROM plans WHERE name = 'cli redraw'")).scalar()
    assert status == "removed"
    # Publishing it is refused (the gap), with the problem list.
    result = runner.invoke(main, ["grids", "publish", str(pid)])
    assert result.exit_code == 2 and "invalid_plan" in result.output
    out2 = tmp_path / "plan.gpkg"
    result = runner.invoke(main, ["grids", "export", "--plan", str(pid), "--format", "gpkg",
                                  "-o", str(out2)])
    assert result.exit_code == 0 and "15 grids" in result.output
    with engine.begin() as conn:
        conn.execute(text("UPDATE plans SET status = 'discarded' WHERE id = :p"), {"p": pid})

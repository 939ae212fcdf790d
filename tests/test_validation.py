"""Coverage validation: hand-made fixtures with known problems and areas, the API, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner

from gis_server.core import gridio
from gis_server.core import validation as v

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
SRID = EXPECTED["metric_srid"]
PARENT = EXPECTED["parent"]


def load(name: str) -> list[dict]:
    return gridio.read_layer((FIXTURES / f"{name}.geojson").read_bytes(),
                             f"{name}.geojson")["features"]


def parents() -> dict:
    feats = load("parent")
    return {f["code"]: f["geometry"] for f in feats}


def problems_of(name: str, **settings) -> list[dict]:
    return v.validate_layer(load(name), parents(), SRID, v.Settings(**settings))


def test_valid_fixture_has_no_problem():
    assert problems_of("valid") == []


@pytest.mark.parametrize("name", [n for n, e in EXPECTED["problems"].items() if e])
def test_fixture_problem_is_found_with_its_area(name):
    want = EXPECTED["problems"][name]
    found = [p for p in problems_of(name) if p["type"] == want["type"]]
    assert len(found) == 1, (name, problems_of(name))
    p = found[0]
    assert p["area_m2"] == pytest.approx(want["area_m2"], rel=0.002), p
    if "grids" in want:
        assert p["grids"] == [PARENT[:12] + s for s in want["grids"]]
    # A map can draw it: the geometry is GeoJSON in EPSG:4326 with the same area.
    geom = shapely.geometry.shape(p["geometry"])
    assert geom.is_valid and not geom.is_empty
    area = shapely.area(v.to_metric(geom, SRID))
    assert area == pytest.approx(want["area_m2"], rel=0.002)
    assert p["message"]


def test_gap_names_the_neighbouring_grid():
    gap = [p for p in problems_of("gap") if p["type"] == "gap"][0]
    assert PARENT[:12] + "06" in gap["grids"]


def test_bowtie_gets_a_make_valid_proposal_and_the_uncovered_part_is_a_gap():
    found = problems_of("bowtie")
    invalid = [p for p in found if p["type"] == "invalid"][0]
    assert "Self-intersection" in invalid["reason"]
    proposal = shapely.geometry.shape(invalid["proposal"])
    assert proposal.is_valid
    assert shapely.area(v.to_metric(proposal, SRID)) == pytest.approx(5000, rel=0.002)
    types = {p["type"] for p in found}
    assert {"invalid", "multipart", "gap"} <= types
    gap_area = sum(p["area_m2"] for p in found if p["type"] == "gap")
    assert gap_area == pytest.approx(5000, rel=0.002)


def test_hole_is_also_a_gap_of_the_parent():
    gaps = [p for p in problems_of("hole") if p["type"] == "gap"]
    assert [round(p["area_m2"]) for p in gaps] == [400]


def test_sliver_and_size_tolerances_are_configurable():
    assert not [p for p in problems_of("sliver", sliver_area_m2=100, sliver_width_m=1)
                if p["type"] == "sliver"]
    size = [p for p in problems_of("valid", target_area_m2=50_000) if p["type"] == "size"]
    assert len(size) == 6 and all(p["ratio"] == pytest.approx(0.2, rel=0.01) for p in size)


def test_a_child_of_an_unknown_parent_is_outside():
    feats = load("valid")
    feats[0]["parent_code"] = "11010899900100"
    found = [p for p in v.validate_layer(feats, parents(), SRID) if p["type"] ==
             "outside_parent"]
    assert [p["grids"] for p in found] == [[feats[0]["code"]]]


def test_repair_removes_overlap_and_preview_changes_nothing():
    feats = load("overlap")
    before = [f["geometry"] for f in feats]
    repaired, remaining = v.repair_layer(feats, parents(), SRID)
    assert [f["geometry"] for f in feats] == before  # a preview: input untouched
    assert not [p for p in remaining if p["type"] == "overlap"]
    areas = shapely.area(v.to_metric(
        shapely.GeometryCollection([f["geometry"] for f in repaired]).geoms, SRID))
    assert areas.sum() == pytest.approx(60_000, rel=1e-4)  # the parent, once


def test_repair_closes_a_narrow_internal_gap():
    feats = load("valid")
    # Pull C2's east edge back by 2 m: a 2 m x 100 m gap between C2 and C3.
    g = v.to_metric(feats[1]["geometry"], SRID)
    minx, miny, maxx, maxy = g.bounds
    feats[1]["geometry"] = v.to_wgs(shapely.box(minx, miny, maxx - 2, maxy), SRID)
    assert [p["type"] for p in v.validate_layer(feats, parents(), SRID)] == ["gap"]
    _, remaining = v.repair_layer(feats, parents(), SRID)
    assert remaining == []


def test_whole_hierarchy_of_the_synthetic_city_is_valid(engine):
    with engine.connect() as conn:
        result = v.validate_hierarchy(conn)
    assert result["problems"] == []
    assert result["grids"]["unit"] == 16


# -- the API ---------------------------------------------------------------------------------
def unit_layer(client, community=None):
    url = "/api/v1/grids?level=unit" + (f"&parent={community}" if community else "")
    return client.get(url).get_json(force=True)


def test_validate_endpoint_accepts_the_current_layer(client):
    fc = unit_layer(client)
    response = client.post("/api/v1/grids/validate", json=fc)
    assert response.status_code == 200, response.json
    assert response.json["problems"] == [] and response.json["grids"] == 16


def test_validate_endpoint_reports_a_gap(client, engine):
    fc = unit_layer(client)
    first = fc["features"][0]
    with engine.connect() as conn:
        srid = v.metric_srid(conn)
    g = v.to_metric(shapely.geometry.shape(first["geometry"]), srid)
    shrunk = v.to_wgs(shapely.buffer(g, -3, join_style="mitre"), srid)
    first["geometry"] = shapely.geometry.mapping(shrunk)
    response = client.post("/api/v1/grids/validate", json=fc)
    gaps = [p for p in response.json["problems"] if p["type"] == "gap"]
    assert len(gaps) == 1
    expected = shapely.area(g) - shapely.area(shapely.buffer(g, -3, join_style="mitre"))
    assert gaps[0]["area_m2"] == pytest.approx(expected, rel=0.01)
    assert first["properties"]["code"] in gaps[0]["grids"]


def test_validate_endpoint_accepts_file_uploads(client):
    data = (FIXTURES / "overlap.geojson").read_bytes()
    response = client.post("/api/v1/grids/validate",
                           data={"file": (__import__("io").BytesIO(data), "overlap.geojson")},
                           content_type="multipart/form-data")
    assert response.status_code == 200
    # The fixture's parent does not exist in this city: every grid is outside its parent.
    assert {p["type"] for p in response.json["problems"]} >= {"outside_parent", "overlap"}


@pytest.mark.parametrize("body,field", [
    ({"type": "Feature"}, "features"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                 "geometry": {"type": "Point",
                                                              "coordinates": [1, 2]}}]},
     "file"),
])
def test_validate_endpoint_bad_input_is_400(client, body, field):
    response = client.post("/api/v1/grids/validate", json=body)
    assert response.status_code == 400 and response.json["field"] == field


def test_validate_requires_parent_codes(client):
    fc = unit_layer(client)
    for f in fc["features"]:
        f["properties"].pop("parent_code", None)
    response = client.post("/api/v1/grids/validate", json=fc)
    assert response.status_code == 400 and response.json["field"] == "parent_code"


def test_repair_endpoint_previews(client):
    fc = json.loads((FIXTURES / "overlap.geojson").read_text())
    response = client.post("/api/v1/grids/repair", json=fc)
    assert response.status_code == 200
    assert len(response.json["repaired"]["features"]) == 6


def test_validate_is_refused_to_reporters_and_workers(client_as):
    fc = json.loads((FIXTURES / "valid.geojson").read_text())
    for role in ("reporter", "grid_worker"):
        assert client_as(role).post("/api/v1/grids/validate", json=fc).status_code == 403


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_validate_prints_problems_and_fails(database_url, monkeypatch):
    from gis_server.cli import main
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(main, ["grids", "validate", str(FIXTURES / "gap.geojson")])
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert "outside_parent" in {p["type"] for p in out["problems"]}
    result = runner.invoke(main, ["grids", "validate", "--current"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["problems"] == []

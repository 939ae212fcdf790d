"""The synthetic city generator: determinism, exact grid coverage, codes, people, loading."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer
from sqlalchemy import text

from gis_server.loaders.bulk import (BUILDING_COLUMNS, DEPARTMENT_COLUMNS, FACILITY_COLUMNS,
                                     GRID_COLUMNS, HOUSEHOLD_COLUMNS, PERSON_COLUMNS,
                                     WORKER_COLUMNS, WORKER_GRID_COLUMNS, write_city)
from gis_server.loaders.synthetic import generate

TO_METRIC = Transformer.from_crs(4326, 4548, always_xy=True)
ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


@pytest.fixture(scope="module")
def small():
    return generate("small", seed=1)


@pytest.fixture(scope="module")
def demo():
    return generate("demo", seed=1)


def metric(geoms):
    return shapely.transform(np.asarray(geoms, dtype=object),
                             lambda xy: np.column_stack(TO_METRIC.transform(xy[:, 0], xy[:, 1])))


def frames(city):
    return {"grids": city.grids, "buildings": city.buildings, "households": city.households,
            "persons": city.persons, "facilities": city.facilities,
            "departments": city.departments, "workers": city.workers,
            "worker_grids": city.worker_grids}


# --- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_identical_frames(small):
    again = generate("small", seed=1)
    for name, frame in frames(small).items():
        other = frames(again)[name]
        pd.testing.assert_frame_equal(frame.drop(columns="geometry", errors="ignore"),
                                      other.drop(columns="geometry", errors="ignore"))
        if "geometry" in frame:
            assert (shapely.to_wkb(frame.geometry.values)
                    == shapely.to_wkb(other.geometry.values)).all(), name


def test_other_seed_gives_other_city(small):
    other = generate("small", seed=2)
    units = small.grids.level == "unit"
    assert not shapely.equals_exact(small.grids.geometry.values[units],
                                    other.grids.geometry.values[units]).all()
    assert list(small.persons.name) != list(other.persons.name)
    assert list(small.persons.id_number) != list(other.persons.id_number)


def test_columns_are_what_bulk_expects(small):
    assert list(small.grids.columns) == GRID_COLUMNS + ["target_households"]
    assert set(BUILDING_COLUMNS) <= set(small.buildings.columns)
    assert list(small.households.columns) == HOUSEHOLD_COLUMNS
    assert list(small.persons.columns) == PERSON_COLUMNS
    assert set(FACILITY_COLUMNS) <= set(small.facilities.columns)
    assert list(small.departments.columns) == DEPARTMENT_COLUMNS
    assert list(small.workers.columns) == WORKER_COLUMNS
    assert list(small.worker_grids.columns) == WORKER_GRID_COLUMNS
    assert small.metric_srid == 4548 and small.county_code == "110108"
    assert str(small.grids.crs) == "EPSG:4326"
    for frame in (small.buildings, small.households, small.workers):
        assert list(frame.id) == list(range(1, len(frame) + 1))


def test_sizes(small, demo):
    levels = small.grids.level.value_counts()
    assert dict(levels) == {"district": 1, "street": 2, "community": 4, "unit": 16}
    assert len(small.buildings) == 128
    levels = demo.grids.level.value_counts()
    assert dict(levels) == {"district": 1, "street": 3, "community": 12, "unit": 108}
    assert len(demo.buildings) == 3000
    assert 9_000 < len(demo.households) < 11_000
    with pytest.raises(ValueError):
        generate("huge")


# --- geometry ---------------------------------------------------------------------------------
def check_exact_cover(city):
    g = city.grids
    assert shapely.is_valid(g.geometry.values).all()
    geom = dict(zip(g.code, g.geometry.values))
    levels = list(g.level)
    # parents before children
    order = {"district": 0, "street": 1, "community": 2, "unit": 3}
    assert [order[lv] for lv in levels] == sorted(order[lv] for lv in levels)
    for parent_level in ("district", "street", "community"):
        parents = g[g.level == parent_level]
        for code in parents.code:
            kids = g[g.parent_code == code].geometry.values
            assert len(kids) > 0
            parent = geom[code]
            area_sum = shapely.area(kids).sum()
            assert abs(parent.area - area_sum) <= 1e-6 * parent.area, code
            union = shapely.union_all(kids)
            assert shapely.symmetric_difference(parent, union).area <= 1e-9 * parent.area, code
    # No two grids of one level overlap (all levels at once, by STRtree).
    for level in ("street", "community", "unit"):
        polys = g[g.level == level].geometry.values
        i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
        pairs = i < j
        overlap = shapely.area(shapely.intersection(polys[i[pairs]], polys[j[pairs]]))
        assert overlap.max(initial=0) <= 1e-9 * shapely.area(polys).min(), level
        # ...and together they are the whole district (no gap)
        district = geom[g.code.iloc[0]]
        assert abs(shapely.area(polys).sum() - district.area) <= 1e-6 * district.area


def test_every_level_covers_its_parent_exactly(small):
    check_exact_cover(small)


def test_demo_covers_exactly(demo):
    check_exact_cover(demo)


def test_unit_grids_are_about_ten_thousand_square_metres(demo):
    units = demo.grids[demo.grids.level == "unit"]
    area = shapely.area(metric(units.geometry.values))
    assert area.mean() == pytest.approx(10_000, rel=1e-6)
    assert area.min() > 5_000 and area.max() < 16_000
    assert not np.allclose(area, 10_000)  # jittered, not all squares
    hull = shapely.area(shapely.convex_hull(metric(units.geometry.values)))
    assert np.allclose(hull, area, rtol=1e-9)  # every cell is a convex quad


def test_codes_and_names(small):
    g = small.grids
    assert g.code.is_unique
    assert g.code.str.fullmatch(r"110108\d{8}").all()
    by_level = dict(zip(g.level, g.code))
    assert by_level["district"] == "11010800000000"
    streets = g[g.level == "street"]
    comms = g[g.level == "community"]
    units = g[g.level == "unit"]
    assert streets.code.str.fullmatch(r"110108\d{3}00000").all()
    assert (streets.code.str[6:9] != "000").all()
    assert comms.code.str.fullmatch(r"110108\d{6}00").all()
    assert (comms.code.str[9:12] != "000").all()
    assert (units.code.str[12:] != "00").all()
    assert (comms.code.str[:9] + "00000" == comms.parent_code).all()
    assert (units.code.str[:12] + "00" == units.parent_code).all()
    assert (streets.parent_code == "11010800000000").all()
    assert streets.name.str.endswith("街道").all()
    assert comms.name.str.endswith("社区").all()
    assert units.name.str.fullmatch(r".+社区第\d{2}网格").all()
    assert (units.code.str[12:] == units.name.str.extract(r"第(\d{2})网格")[0]).all()
    assert units.target_households.notna().all() and (units.target_households > 0).all()
    assert g[g.level != "unit"].target_households.isna().all()


def check_reading_order(children, ncols):
    """Children sorted by code run west→east along rows of ``ncols``, rows north→south."""
    children = children.sort_values("code")
    c = shapely.centroid(metric(children.geometry.values))
    x, y = shapely.get_x(c), shapely.get_y(c)
    n = len(children)
    assert n % ncols == 0
    x, y = x.reshape(-1, ncols), y.reshape(-1, ncols)
    assert (np.diff(x, axis=1) > 0).all()  # west → east inside a row
    assert (y[:-1].min(axis=1) > y[1:].max(axis=1)).all()  # rows north → south


@pytest.mark.parametrize("size", ["small", "demo"])
def test_numbering_runs_west_east_north_south(size, small, demo):
    city = small if size == "small" else demo
    lay = city.extra["layout"]
    g = city.grids
    check_reading_order(g[g.level == "street"], lay.streets[0])
    for code in g[g.level == "street"].code:
        check_reading_order(g[g.parent_code == code], lay.communities[0])
    for code in g[g.level == "community"].code:
        kids = g[g.parent_code == code]
        assert list(kids.code.str[12:]) == [f"{i:02d}" for i in range(1, len(kids) + 1)]
        check_reading_order(kids, lay.units[0])


def test_buildings_and_facilities_lie_inside_their_cell(demo):
    cells = demo.grids[demo.grids.level == "unit"].set_index("code").geometry
    b = demo.buildings
    assert shapely.is_valid(b.geometry.values).all()
    assert shapely.contains_properly(cells.loc[b.grid_code].values, b.geometry.values).all()
    f = demo.facilities
    assert shapely.contains_properly(cells.loc[f.grid_code].values, f.geometry.values).all()
    # Buildings do not overlap each other.
    polys = b.geometry.values
    i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
    assert (i == j).all()
    footprint = shapely.area(metric(polys))
    assert footprint.min() > 10 and footprint.max() < 2_000


def test_building_attributes(small):
    b = small.buildings
    assert b.name.str.fullmatch(r"\d+号楼").all()
    assert b.address.str.fullmatch(r"海淀区.+街道.+社区\d+号楼").all()
    assert all(a.endswith(n) for a, n in zip(b.address, b.name))
    assert b.floors.between(1, 30).all()
    assert set(b.use) <= {"residential", "commercial", "office", "school", "mixed", "public"}
    assert (b.use == "residential").mean() > 0.5
    assert b.osm_id.isna().all()
    # Building numbers are unique inside a community.
    assert not b.address.duplicated().any()


# --- people -----------------------------------------------------------------------------------
def valid_check_digit(id_number: str) -> bool:
    total = sum(int(c) * w for c, w in zip(id_number[:17], ID_WEIGHTS))
    return "10X98765432"[total % 11] == id_number[17]


def test_id_numbers(small):
    p = small.persons
    assert p.id_number.str.fullmatch(r"\d{17}[\dX]").all()
    assert all(valid_check_digit(s) for s in p.id_number)
    assert p.id_number.is_unique
    assert (p.id_number.str[6:14] == p.birth_date.dt.strftime("%Y%m%d")).all()
    male = p.id_number.str[16].astype(int) % 2 == 1
    assert (p.gender == np.where(male, "M", "F")).all()
    registered = p[p.category != "floating"]
    assert (registered.id_number.str[:6] == "110108").mean() > 0.7
    floating = p[p.category == "floating"]
    assert len(floating) > 0
    assert not floating.id_number.str.startswith("11").any()


def test_persons_and_households(demo):
    h, p = demo.households, demo.persons
    assert p.household_id.between(1, len(h)).all()
    assert (p.groupby("household_id").size().reindex(h.id).to_numpy() == h["size"]).all()
    heads = p[p.relation == "户主"]
    assert heads.household_id.is_unique and len(heads) == len(h)
    assert (heads.name.to_numpy() == h.set_index("id").loc[heads.household_id].head_name
            .to_numpy()).all()
    assert set(p.relation) <= {"户主", "配偶", "子女", "父母", "孙子女", "兄弟姐妹"}
    assert h["size"].between(1, 6).all()
    assert 0.05 <= h.is_rental.mean() <= 0.15
    share = p.category.value_counts(normalize=True)
    assert 0.04 <= share["floating"] <= 0.12
    assert 0.005 <= share["special"] <= 0.06
    special = p[p.category == "special"]
    assert special.special_group.notna().all()
    assert p[p.category != "special"].special_group.isna().all()
    assert set(special.special_group) <= {"独居老人", "空巢老人", "残疾人", "低保户"}
    phones = p.phone.dropna()
    assert phones.str.fullmatch(r"1[3-9]\d{9}").all() and len(phones) > 0.8 * len(p)
    assert p.name.str.fullmatch(r"[\u4e00-\u9fff]{2,4}").all()
    # Every household lives in a residential or mixed building, rooms unique per building.
    uses = demo.buildings.set_index("id").use
    assert set(uses.loc[h.building_id]) <= {"residential", "mixed"}
    assert not h.duplicated(["building_id", "unit", "room"]).any()
    assert h.unit.str.fullmatch(r"\d单元").all() and h.room.str.fullmatch(r"\d{3,4}").all()


def test_facilities_departments_workers(demo):
    f = demo.facilities
    assert {"fire_hydrant", "school", "clinic", "kindergarten", "pharmacy", "supermarket",
            "gas_station", "internet_cafe"} <= set(f.kind)
    assert f[f.is_key_place].kind.isin(["gas_station", "internet_cafe", "hotel", "ktv"]).all()
    assert f[f.kind.isin(["gas_station", "internet_cafe"])].is_key_place.all()
    d = demo.departments
    assert d.code.is_unique
    assert {"urban_mgmt", "municipal", "greenery", "traffic", "housing", "police", "fire",
            "sanitation", "market"} <= set(d.code)
    g = demo.grids
    assert set(d.grid_code) <= set(g.code)
    streets = set(g[g.level == "street"].code)
    assert streets <= set(d.grid_code)
    w, wg = demo.workers, demo.worker_grids
    assert w.device_id.is_unique and w.device_id.str.fullmatch(r"860000\d{9}").all()
    assert w.phone.str.fullmatch(r"1[3-9]\d{9}").all()
    assert set(w.department_code.dropna()) <= set(d.code)
    assert (w[w.role == "police"].department_code == "police").all()
    assert (w[w.role == "firefighter"].department_code == "fire").all()
    assert set(wg.worker_id) == set(w.id)
    assert not wg.duplicated(["worker_id", "grid_code"]).any()
    units = set(g[g.level == "unit"].code)
    assert set(wg.grid_code) == units
    responsible = wg[wg.is_responsible]
    assert responsible.grid_code.is_unique and set(responsible.grid_code) == units
    roles = w.set_index("id").role
    assert (roles.loc[responsible.worker_id] == "grid_admin").all()
    # every unit grid has the whole team
    team = wg.assign(role=roles.loc[wg.worker_id].to_numpy()).groupby("grid_code").role
    for roleset in team.agg(set):
        assert {"grid_admin", "coordinator", "police", "firefighter", "supervisor",
                "volunteer", "leader"} == roleset


# --- end to end -------------------------------------------------------------------------------
def test_write_city_end_to_end(small):
    from gis_server.db import engine_for, migrate
    from gis_server.pgcluster import Cluster, create_database, drop_database

    cluster = Cluster()
    cluster.start()
    dbname = f"gis_test_synth_{os.getpid()}"
    url = create_database(cluster.url(), dbname, drop_first=True)
    engine = engine_for(url)
    try:
        migrate(url)
        with engine.begin() as conn:
            counts = write_city(conn, small, show_progress=False)
        assert counts == small.counts()
        with engine.connect() as conn:
            def scalar(sql):
                return conn.execute(text(sql)).scalar_one()

            for table, n in counts.items():
                assert scalar(f"SELECT count(*) FROM {table}") == n, table
            assert scalar("SELECT count(*) FROM worker_grids") == len(small.worker_grids)
            assert scalar("SELECT count(*) FROM buildings WHERE grid_id IS NULL") == 0
            assert scalar("SELECT count(*) FROM households WHERE grid_id IS NULL") == 0
            assert scalar("SELECT count(*) FROM facilities WHERE grid_id IS NULL") == 0
            assert scalar("SELECT metric_srid FROM city") == 4548
            # The grid derived in SQL is the generator's own cell, for every building/facility.
            derived = dict(conn.execute(text(
                "SELECT b.id, g.code FROM buildings b JOIN grids g ON g.id = b.grid_id")).all())
            assert derived == dict(zip(small.buildings.id, small.buildings.grid_code))
            got = [code for (code,) in conn.execute(text(
                "SELECT g.code FROM facilities f JOIN grids g ON g.id = f.grid_id "
                "ORDER BY f.id"))]
            assert got == list(small.facilities.grid_code)
            # Areas in metres, and every parent is exactly the sum of its children.
            area = dict(conn.execute(text(
                "SELECT level, sum(area_m2) FROM grids GROUP BY level")).all())
            assert area["unit"] == pytest.approx(16 * 10_000, rel=1e-6)
            for level in ("street", "community"):
                assert area[level] == pytest.approx(area["district"], rel=1e-6)
            bad = scalar("""
                SELECT count(*) FROM grids p
                JOIN (SELECT parent_id, ST_Union(geom) AS u, sum(ST_Area(geom)) AS a
                      FROM grids WHERE parent_id IS NOT NULL GROUP BY parent_id) c
                  ON c.parent_id = p.id
                WHERE abs(ST_Area(p.geom) - c.a) > 1e-6 * ST_Area(p.geom)
                   OR ST_Area(ST_SymDifference(p.geom, c.u)) > 1e-9 * ST_Area(p.geom)""")
            assert bad == 0
            heads = scalar("""
                SELECT count(*) FROM households h JOIN persons p ON p.household_id = h.id
                WHERE p.relation = '户主' AND p.name = h.head_name""")
            assert heads == len(small.households)
    finally:
        engine.dispose()
        drop_database(cluster.url(), dbname)

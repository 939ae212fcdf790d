"""gis_server.client against the live app: GeoDataFrames, paging, auth, de-identification."""
from __future__ import annotations

import geopandas as gpd
import pytest
from sqlalchemy import text

from gis_server.client import Client, ClientError


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture(scope="module")
def data(engine):
    """Incidents and positions written straight to the tables (a closed case per grid)."""
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text("""
            INSERT INTO incidents (category, description, geom, source, reporter, status,
                                   grid_id, reported_at, filed_at, dispatched_at, due_at,
                                   closed_at)
            SELECT CASE WHEN g.id % 2 = 0 THEN 'E0101' ELSE 'E0102' END,
                   'client test', ST_PointOnSurface(g.geom), 'patrol', '李四', 'closed', g.id,
                   timestamptz '2026-04-01 08:00+00', timestamptz '2026-04-01 08:30+00',
                   timestamptz '2026-04-01 09:00+00', timestamptz '2026-04-01 13:00+00',
                   timestamptz '2026-04-01 09:00+00' + ((g.id % 7) || ' hours')::interval
            FROM grids g WHERE g.level = 'unit' AND g.valid_to IS NULL
            RETURNING id""")).all()]
        worker = conn.execute(text("SELECT min(id) FROM workers")).scalar()
        conn.execute(text("""
            INSERT INTO positions (worker_id, recorded_at, geom, grid_id)
            SELECT :w, timestamptz '2026-04-02 08:00+00' + (s || ' minutes')::interval,
                   ST_PointOnSurface(g.geom), g.id
            FROM generate_series(0, 59) s,
                 LATERAL (SELECT * FROM grids WHERE level = 'unit' AND valid_to IS NULL
                          ORDER BY code LIMIT 1) g"""), {"w": worker})
    yield {"incidents": ids, "worker": worker}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM incidents WHERE id = ANY(:i)"), {"i": ids})
        conn.execute(text("DELETE FROM positions WHERE worker_id = :w AND recorded_at "
                          ">= '2026-04-02' AND recorded_at < '2026-04-03'"), {"w": worker})


@pytest.fixture
def analyst(live_server, accounts):
    return Client(live_server, accounts["analyst"]["token"], progress=False, page_size=25)


def test_grids_at_a_level(analyst, engine):
    units = analyst.grids("unit")
    assert isinstance(units, gpd.GeoDataFrame) and units.crs.to_string() == "OGC:CRS84"
    assert len(units) == scalar(engine, "SELECT count(*) FROM grids WHERE level = 'unit' "
                                        "AND valid_to IS NULL")
    assert units.geometry.geom_type.isin(["MultiPolygon", "Polygon"]).all()
    assert units["code"].str.len().eq(14).all()
    assert analyst.grids("unit", at="1990-01-01").empty


def test_buildings_page_transparently(analyst, engine):
    buildings = analyst.buildings()
    total = scalar(engine, "SELECT count(*) FROM buildings")
    assert len(buildings) == total > 25  # several pages of 25
    assert buildings.index.is_unique
    minx, miny, maxx, maxy = buildings.total_bounds
    box = (minx, miny, (minx + maxx) / 2, (miny + maxy) / 2)
    part = analyst.buildings(bbox=box)
    assert 0 < len(part) < total


def test_incidents_filters_and_no_personal_field(analyst, data):
    inc = analyst.incidents(category="E0101", since="2026-04-01",
                            until="2026-04-02")
    assert len(inc) > 0 and set(inc["category"]) == {"E0101"}
    assert not {"reporter", "address", "description"} & set(inc.columns)
    both = analyst.incidents(category=["E0101", "E0102"],
                             since="2026-04-01", until="2026-04-02")
    assert len(both) == len(data["incidents"])
    assert str(both["closed_at"].dtype).startswith("datetime64")


def test_positions_for_a_period(analyst, data):
    pos = analyst.positions("2026-04-02T08:00:00Z", "2026-04-02T08:29:59Z")
    assert len(pos) == 30 and set(pos["worker_id"]) == {data["worker"]}
    assert "name" not in pos.columns and "phone" not in pos.columns


def test_indicators(analyst, data, live_server, accounts):
    ind = analyst.indicators("community", since="2026-04-01", until="2026-04-02")
    # the client returns exactly the server's ranking, with the community geometries
    import requests
    body = requests.get(f"{live_server}/api/v1/indicators", params={
        "level": "community", "from": "2026-04-01T00:00:00+00:00",
        "to": "2026-04-02T00:00:00+00:00"},
        headers={"Authorization": f"Bearer {accounts['analyst']['token']}"}).json()
    assert list(ind["key"]) == [r["key"] for r in body["ranking"]]
    assert ind["filed"].sum() == sum(r["filed"] for r in body["ranking"]) > 0
    assert ind.geometry.notna().all() and ind.crs is not None
    assert ((ind["on_time_closure_rate"].dropna() >= 0)
            & (ind["on_time_closure_rate"].dropna() <= 1)).all()
    departments = analyst.indicators("department", since="2026-04-01", until="2026-04-02")
    assert "geometry" not in departments.columns and len(departments) > 0


def test_auth_errors(live_server, accounts):
    with pytest.raises(ClientError) as err:
        Client(live_server, "not-a-token", progress=False).grids("unit")
    assert err.value.status == 401
    with pytest.raises(ClientError) as err:
        Client(live_server, accounts["reporter"]["token"], progress=False).grids("unit")
    assert err.value.status == 403


def test_progress_bar(live_server, accounts, capsys):
    c = Client(live_server, accounts["admin"]["token"], progress=True, page_size=20)
    assert len(c.buildings()) > 20
    assert "buildings" in capsys.readouterr().err


def test_flatgeobuf_and_geojson_pages_give_the_same_frames(live_server, accounts, data):
    """The default (FlatGeobuf pages, prefetched) and encoding="json" agree row for row."""
    import pandas as pd
    token = accounts["analyst"]["token"]
    fgb = Client(live_server, token, progress=False, page_size=30)
    js = Client(live_server, token, progress=False, page_size=30, encoding="json")
    assert fgb.encoding == "fgb"
    for fetch in (lambda c: c.buildings(), lambda c: c.grids("community"),
                  lambda c: c.incidents(since="2026-04-01", until="2026-04-02")):
        a, b = fetch(fgb), fetch(js)
        assert len(a) > 0 and list(a.index) == list(b.index)
        assert set(a.columns) == set(b.columns)
        assert a.crs == b.crs
        assert a.geometry.geom_equals_exact(b.geometry, 1e-7).all()
        left = pd.DataFrame(a.drop(columns="geometry"))
        right = pd.DataFrame(b.drop(columns="geometry"))[list(left.columns)]
        for column in left.columns:  # missing values: NaN/NaT (FlatGeobuf) or None (JSON)
            missing = left[column].isna()
            assert (missing == right[column].isna()).all(), column
            got, want = left[column][~missing], right[column][~missing]
            if str(got.dtype).startswith("datetime64"):  # FlatGeobuf (GDAL): milliseconds
                assert str(want.dtype).startswith("datetime64"), column
                assert ((got - want).abs() <= pd.Timedelta(milliseconds=1)).all(), column
            else:
                assert list(got) == list(want), column
    with pytest.raises(ValueError):
        Client(live_server, token, encoding="xml")

"""Indicators: the formulas on a hand-computed fixture, levels, ranking, weights, scope."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from gis_server.core import indicators as ind

PERIOD = "from=2020-03-01T00:00:00%2B08:00&to=2020-04-01T00:00:00%2B08:00"

# (grid index, status, filed, dispatched, due, closed, postponed, rework, extensions)
ROWS = [
    # grid A: 4 filed in March
    (0, "closed", "03-02 09:00", "03-02 10:00", "03-03 10:00", "03-02 14:00", False, 0, 0),
    (0, "evaluated", "03-05 09:00", "03-05 10:00", "03-05 12:00", "03-05 18:00", False, 1, 0),
    (0, "handling", "03-10 09:00", "03-10 10:00", "03-20 10:00", None, True, 0, 1),
    (0, "dispatched", "03-30 09:00", "03-30 10:00", "04-10 10:00", None, False, 0, 0),
    # grid B: 2 filed, both closed on time
    (1, "closed", "03-03 09:00", "03-03 10:00", "03-04 10:00", "03-03 12:00", False, 0, 0),
    (1, "closed", "03-04 09:00", "03-04 10:00", "03-05 10:00", "03-04 14:00", False, 0, 0),
    # not in the cohort: rejected (never filed), filed in February
    (1, "rejected", None, None, None, "03-06 10:00", False, 0, 0),
    (1, "closed", "02-20 09:00", "02-20 10:00", "02-21 10:00", "02-20 12:00", False, 0, 0),
]


def ts(value):
    return None if value is None else f"2020-{value}:00+08:00"


@pytest.fixture(scope="module")
def grids(engine, accounts):
    prefix = accounts["community_admin"]["scope"][:12]
    with engine.begin() as conn:
        units = conn.execute(text(
            "SELECT id, code FROM grids WHERE level = 'unit' AND valid_to IS NULL "
            "AND left(code, 12) = :p ORDER BY code LIMIT 2"), {"p": prefix}).all()
        for g, status, filed, disp, due, closed, postponed, rework, ext in ROWS:
            conn.execute(text("""
                INSERT INTO incidents (category, description, geom, source, status, grid_id,
                    reported_at, filed_at, dispatched_at, due_at, closed_at, postponed,
                    rework_count, extension_count, department_id)
                SELECT 'E0101', 'indicator fixture', ST_PointOnSurface(g.geom), 'patrol', :s,
                       g.id, coalesce(CAST(:f AS timestamptz), CAST(:c AS timestamptz)), :f,
                       :d, :due, :c, :p, :r, :e,
                       (SELECT id FROM departments WHERE code = 'sanitation')
                FROM grids g WHERE g.id = :g
            """), {"s": status, "f": ts(filed), "d": ts(disp), "due": ts(due),
                   "c": ts(closed), "p": postponed, "r": rework, "e": ext,
                   "g": units[g].id})
    return [u.code for u in units]


def by_key(rows):
    return {r["key"]: r for r in rows}


def test_formulas_on_a_hand_computed_fixture(client, grids):
    body = client.get(f"/api/v1/indicators?level=grid&{PERIOD}").json
    rows = by_key(body["ranking"])
    assert set(rows) == set(grids)
    a, b = rows[grids[0]], rows[grids[1]]
    assert (a["filed"], a["closed"], a["due"], a["postponed"], a["closed_on_time"]) == \
        (4, 2, 3, 1, 1)
    assert a["closure_rate"] == 0.5
    assert a["on_time_closure_rate"] == 0.5  # 1 / (3 − 1)
    assert a["rework_rate"] == 0.25 and a["extension_rate"] == 0.25
    assert a["avg_handling_hours"] == 6.0  # (4 h + 8 h) / 2
    # 100 × (0.3·0.5 + 0.4·0.5 + 0.2·0.75 + 0.1·0.75) / 1.0
    assert a["score"] == 57.5
    assert (b["filed"], b["closed"], b["on_time_closure_rate"], b["score"]) == (2, 2, 1.0, 100)
    assert b["avg_handling_hours"] == 3.0
    assert [r["key"] for r in body["ranking"]] == [grids[1], grids[0]]
    assert (b["rank"], a["rank"]) == (1, 2)
    assert body["weights"] == ind.load_weights()


def test_community_level_sums_the_grids(client, grids):
    rows = client.get(f"/api/v1/indicators?level=community&{PERIOD}").json["ranking"]
    (c,) = [r for r in rows if r["key"] == grids[0][:12] + "00"]
    assert (c["filed"], c["closed"], c["due"], c["postponed"], c["closed_on_time"]) == \
        (6, 4, 5, 1, 3)
    assert c["closure_rate"] == round(4 / 6, 4) and c["on_time_closure_rate"] == 0.75
    assert c["rework_rate"] == round(1 / 6, 4)
    streets = client.get(f"/api/v1/indicators?level=street&{PERIOD}").json["ranking"]
    assert sum(r["filed"] for r in streets) == 6
    depts = client.get(f"/api/v1/indicators?level=department&{PERIOD}").json["ranking"]
    assert [(r["key"], r["filed"]) for r in depts] == [("sanitation", 6)]


def test_weights_file_changes_the_score(tmp_path, monkeypatch, client, grids):
    f = tmp_path / "w.toml"
    f.write_text("[weights]\nclosure_rate = 1\non_time_closure_rate = 0\n"
                 "no_rework_rate = 0\nno_extension_rate = 0\n")
    monkeypatch.setenv("GIS_INDICATOR_WEIGHTS", str(f))
    rows = by_key(client.get(f"/api/v1/indicators?level=grid&{PERIOD}").json["ranking"])
    assert rows[grids[0]]["score"] == 50.0 and rows[grids[1]]["score"] == 100.0
    f.write_text("[weights]\nbogus = 1\n")
    with pytest.raises(ValueError):
        ind.load_weights(f)


def test_scope_and_roles(client_as, grids):
    other = client_as("community_admin_b").get(f"/api/v1/indicators?level=grid&{PERIOD}")
    assert other.status_code == 200 and other.json["ranking"] == []
    own = client_as("community_admin").get(f"/api/v1/indicators?level=grid&{PERIOD}")
    assert {r["key"] for r in own.json["ranking"]} == set(grids)
    assert client_as("analyst").get(f"/api/v1/indicators?level=grid&{PERIOD}"
                                    ).status_code == 200
    assert client_as("grid_worker").get("/api/v1/indicators").status_code == 403


def test_bad_parameters(client):
    for q, field in (("level=planet", "level"), ("from=x", "from"),
                     ("from=2020-02-01&to=2020-01-01", "to")):
        r = client.get(f"/api/v1/indicators?{q}")
        assert r.status_code == 400 and r.json["field"] == field, q

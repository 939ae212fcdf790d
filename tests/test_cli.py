"""The CLI end to end against a real database (DATABASE_URL pointed at a fresh one)."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from helpers import dispose_database, fresh_database
from sqlalchemy import text

from gis_server.cli import main
from gis_server.db import engine_for


@pytest.fixture
def empty_db(monkeypatch):
    name = f"gis_test_cli_{os.getpid()}"
    url = fresh_database(name)
    monkeypatch.setenv("DATABASE_URL", url)
    yield url
    dispose_database(url, name)


def test_load_synthetic_then_refuse_then_replace(empty_db):
    runner = CliRunner()
    first = runner.invoke(main, ["load", "synthetic", "--size", "small", "--seed", "3"])
    assert first.exit_code == 0, first.output
    assert "loaded" in first.output
    with engine_for(empty_db).connect() as conn:
        buildings = conn.execute(text("SELECT count(*) FROM buildings")).scalar_one()
        unassigned = conn.execute(text(
            "SELECT count(*) FROM buildings WHERE grid_id IS NULL")).scalar_one()
    assert buildings > 0 and unassigned == 0
    again = runner.invoke(main, ["load", "synthetic", "--size", "small"])
    assert again.exit_code != 0 and "--replace" in again.output
    user = runner.invoke(main, ["users", "create", "keeper", "--role", "planner"])
    assert user.exit_code == 0, user.output
    replaced = runner.invoke(main, ["load", "synthetic", "--size", "small", "--seed", "4",
                                    "--replace"])
    assert replaced.exit_code == 0, replaced.output
    with engine_for(empty_db).connect() as conn:
        assert conn.execute(text("SELECT source FROM city")).scalar_one().endswith("seed=4")
        # accounts and the audit log survive a city replacement
        assert conn.execute(text("SELECT count(*) FROM users WHERE username = 'keeper'")
                            ).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() >= 1
        assert conn.execute(text("SELECT count(*) FROM buildings WHERE grid_id IS NULL")
                            ).scalar_one() == 0


def test_db_url_and_migrate(empty_db):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "url"]).output.strip() == empty_db
    result = runner.invoke(main, ["db", "migrate"])
    assert result.exit_code == 0 and "newest revision" in result.output


def test_incidents_import_all_or_nothing(empty_db, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["load", "synthetic", "--size", "small"]).exit_code == 0
    with engine_for(empty_db).connect() as conn:
        x, y = conn.execute(text("SELECT ST_X(anchor), ST_Y(anchor) FROM buildings "
                                 "ORDER BY id LIMIT 1")).one()
    good = tmp_path / "good.csv"
    good.write_text("category,description,lon,lat,status,reported_at,closed_at\n"
                    f"E0101,old case,{x},{y},closed,2026-03-01T08:00:00+08:00,"
                    "2026-03-01T10:00:00+08:00\n"
                    f"E0102,another,{x},{y},reported,2026-03-02T08:00:00+08:00,\n")
    result = runner.invoke(main, ["incidents", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert "imported 2 incidents" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("category,description,lon,lat\n"
                   f"E0101,fine,{x},{y}\nNOPE,unknown category,{x},{y}\n")
    refused = runner.invoke(main, ["incidents", "import", str(bad)])
    assert refused.exit_code != 0 and "line" in refused.output
    with engine_for(empty_db).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents")).scalar_one() == 2
        grids = conn.execute(text("SELECT count(*) FROM incidents WHERE grid_id IS NULL")
                             ).scalar_one()
        audited = conn.execute(text("SELECT count(*) FROM audit_log "
                                    "WHERE action = 'import_incidents'")).scalar_one()
    assert grids == 0 and audited == 1


def test_incidents_escalate_overdue(empty_db, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["load", "synthetic", "--size", "small"]).exit_code == 0
    with engine_for(empty_db).connect() as conn:
        x, y = conn.execute(text("SELECT ST_X(anchor), ST_Y(anchor) FROM buildings "
                                 "ORDER BY id LIMIT 1")).one()
    csv = tmp_path / "late.csv"
    csv.write_text("category,description,lon,lat,status,reported_at,filed_at,dispatched_at,"
                   "due_at\n"
                   f"E0101,overdue,{x},{y},dispatched,2026-03-02T08:00:00+08:00,"
                   "2026-03-02T08:10:00+08:00,2026-03-02T08:20:00+08:00,"
                   "2026-03-02T12:20:00+08:00\n")
    assert runner.invoke(main, ["incidents", "import", str(csv)]).exit_code == 0
    result = runner.invoke(main, ["incidents", "escalate-overdue"])
    assert result.exit_code == 0 and "escalated 1 overdue" in result.output, result.output
    with engine_for(empty_db).connect() as conn:
        assert conn.execute(text("SELECT circulation FROM incidents")).scalar_one() == "small"
    again = runner.invoke(main, ["incidents", "escalate-overdue"])
    assert "escalated 0 overdue" in again.output  # big only after another 24 h

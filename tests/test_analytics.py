"""The ``analytics`` schema: documented, de-identified views readable by gis_analyst only."""
from __future__ import annotations

import geopandas as gpd
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


VIEWS = ("grids", "buildings", "facilities", "households_by_grid", "incidents",
         "worker_positions_latest", "positions")
PERSONAL = {"name_of_person", "head_name", "id_number", "phone", "reporter", "address",
            "description", "room", "birth_date", "device_id"}


def test_every_view_and_column_is_documented(engine):
    with engine.connect() as conn:
        views = {r[0]: r[1] for r in conn.execute(text(
            "SELECT c.relname, obj_description(c.oid) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'analytics' AND c.relkind = 'v'"))}
        assert set(VIEWS) <= set(views) and all(views[v] for v in VIEWS)
        undocumented = conn.execute(text("""
            SELECT c.relname || '.' || a.attname FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'analytics' AND a.attnum > 0 AND NOT a.attisdropped
              AND col_description(c.oid, a.attnum) IS NULL""")).scalars().all()
        assert undocumented == []
        columns = set(conn.execute(text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'analytics'")).scalars())
    assert not columns & PERSONAL


def test_views_agree_with_the_base_tables(engine):
    with engine.connect() as conn:
        row = conn.execute(text("""
            SELECT (SELECT sum(household_count) FROM analytics.grids
                     WHERE level = 'district' AND is_current),
                   (SELECT count(*) FROM households),
                   (SELECT sum(households) FROM analytics.households_by_grid),
                   (SELECT sum(resident_count) FROM analytics.buildings),
                   (SELECT sum(size) FROM households),
                   (SELECT count(*) FROM analytics.buildings), (SELECT count(*) FROM buildings)
        """)).one()
    assert row[0] == row[1] == row[2] and row[3] == row[4] and row[5] == row[6]


def test_analyst_role_reads_the_views_and_nothing_else(engine):
    with engine.connect() as conn:
        conn.execute(text("SET ROLE gis_analyst"))
        gdf = gpd.read_postgis("SELECT * FROM analytics.grids WHERE level = 'unit'", conn,
                               geom_col="geom")
        assert len(gdf) > 0 and gdf.crs.to_epsg() == 4326
        assert gdf["household_count"].sum() > 0
        for view in VIEWS:
            conn.execute(text(f"SELECT * FROM analytics.{view} LIMIT 1")).all()
        for table in ("persons", "households", "incidents", "workers", "users"):
            with pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text(f"SELECT 1 FROM public.{table} LIMIT 1")).all()
            conn.rollback()
            conn.execute(text("SET ROLE gis_analyst"))
        conn.rollback()
        conn.execute(text("RESET ROLE"))


def test_incident_view_hides_reporter_and_computes_times(engine):
    with engine.begin() as conn:
        grid = conn.execute(text("SELECT id FROM grids WHERE level = 'unit' LIMIT 1")).scalar()
        iid = conn.execute(text("""
            INSERT INTO incidents (category, description, geom, source, reporter, status,
                                   grid_id, reported_at, dispatched_at, due_at, closed_at)
            VALUES ('other', '王五家门口', ST_SetSRID(ST_MakePoint(116.3, 39.98), 4326), 'public',
                    '王五', 'closed', :g, '2026-05-01 08:00+00', '2026-05-01 09:00+00',
                    '2026-05-01 11:00+00', '2026-05-01 12:30+00') RETURNING id"""),
            {"g": grid}).scalar()
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM analytics.incidents WHERE id = :i"),
                               {"i": iid}).mappings().one()
        assert float(row["handling_hours"]) == 3.5 and row["closed_on_time"] is False
        assert "王五" not in str(dict(row))
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM incidents WHERE id = :i"), {"i": iid})

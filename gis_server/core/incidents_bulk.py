"""Bulk import of historical incidents from CSV (COPY + set-based SQL).

Columns: ``category, description, lon, lat`` (required), ``source, status, reported_at,
filed_at, dispatched_at, due_at, closed_at, postponed, rework_count, extension_count``
(optional). Points are routed in bulk with :meth:`GridIndex.route_points` (vectorised
shapely); rows outside every grid or with an unknown category or status are refused as a
whole (nothing is written), naming the first bad line. One ``import`` event per incident.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError
from . import categories as cats
from .incidents import SOURCES, STATES
from .locate import GridIndex

COLUMNS = ["category", "description", "lon", "lat", "source", "status", "reported_at",
           "filed_at", "dispatched_at", "due_at", "closed_at", "postponed", "rework_count",
           "extension_count"]
TIMES = ["reported_at", "filed_at", "dispatched_at", "due_at", "closed_at"]


def _bad(line: int, message: str) -> APIError:
    return APIError(400, "invalid_file", f"line {line}: {message}", line=line)


def import_csv(conn: Connection, index: GridIndex, source, actor: str = "import") -> int:
    """Import a CSV (path or file object) in the caller's transaction; return the count."""
    df = pd.read_csv(source, dtype={"category": str, "description": str, "source": str,
                                    "status": str})
    missing = {"category", "description", "lon", "lat"} - set(df.columns)
    if missing:
        raise APIError(400, "invalid_file", f"missing columns: {sorted(missing)}")
    n = len(df)
    if n == 0:
        return 0
    table = cats.load()
    df["source"] = df.get("source", pd.Series(["patrol"] * n)).fillna("patrol")
    df["status"] = df.get("status", pd.Series(["reported"] * n)).fillna("reported")
    for col, allowed in (("category", set(table)), ("source", set(SOURCES)),
                         ("status", set(STATES))):
        bad = ~df[col].isin(allowed)
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise _bad(i + 2, f"unknown {col} {df[col].iloc[i]!r}")
    lon, lat = df["lon"].to_numpy(float), df["lat"].to_numpy(float)
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90))
    if bad.any():
        raise _bad(int(np.argmax(bad)) + 2, "lon/lat missing or out of range")
    codes = index.route_points(lon, lat)
    uncovered = pd.isna(codes)
    if uncovered.any():
        i = int(np.argmax(uncovered))
        raise _bad(i + 2, f"({lon[i]}, {lat[i]}) is not inside any unit grid")
    grid_ids = dict(conn.execute(text(
        "SELECT code, id FROM grids WHERE level = 'unit' AND valid_to IS NULL")).all())
    dept_ids = dict(conn.execute(text("SELECT code, id FROM departments")).all())
    out = pd.DataFrame({
        "category": df["category"], "description": df["description"].fillna(""),
        "lon": lon, "lat": lat, "source": df["source"], "status": df["status"],
        "grid_id": pd.Series(codes).map(grid_ids).astype("Int64"),
        "department_id": df["category"].map(lambda c: dept_ids.get(table[c].department))
        .astype("Int64"),
        "time_limit": df["category"].map(lambda c: table[c].time_limit),
    })
    for col in TIMES:
        values = df[col] if col in df else pd.Series([None] * n)
        try:
            out[col] = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise APIError(400, "invalid_file", f"column {col}: {exc}") from None
    out["reported_at"] = out["reported_at"].fillna(pd.Timestamp.now(tz="UTC"))
    for col, default in (("postponed", False), ("rework_count", 0), ("extension_count", 0)):
        out[col] = (df[col] if col in df else pd.Series([default] * n)).fillna(default)
    buf = io.StringIO()
    out.to_csv(buf, index=False, header=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
    buf.seek(0)
    conn.execute(text("""
        CREATE TEMP TABLE incident_import (
            category text, description text, lon float8, lat float8, source text,
            status text, grid_id int, department_id int, time_limit text,
            reported_at timestamptz, filed_at timestamptz, dispatched_at timestamptz,
            due_at timestamptz, closed_at timestamptz, postponed boolean,
            rework_count smallint, extension_count smallint) ON COMMIT DROP
    """))
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy("COPY incident_import FROM STDIN WITH (FORMAT csv)") as copy:
            while chunk := buf.read(1 << 20):
                copy.write(chunk)
    count = conn.execute(text("""
        WITH ins AS (
            INSERT INTO incidents (category, description, geom, source, status, grid_id,
                department_id, time_limit, reported_at, filed_at, dispatched_at, due_at,
                closed_at, postponed, rework_count, extension_count, updated_at, flags)
            SELECT category, description, ST_SetSRID(ST_MakePoint(lon, lat), 4326), source,
                   status, grid_id, department_id, time_limit, reported_at, filed_at,
                   dispatched_at, due_at, closed_at, postponed, rework_count,
                   extension_count, coalesce(closed_at, dispatched_at, filed_at, reported_at),
                   '{"imported": true}'::jsonb
            FROM incident_import
            RETURNING id, status, reported_at
        ), ev AS (
            INSERT INTO incident_events (incident_id, at, actor, action, from_state, to_state,
                                         data)
            SELECT id, reported_at, :actor, 'import', NULL, status, '{}'::jsonb FROM ins
        )
        SELECT count(*) FROM ins
    """), {"actor": actor}).scalar_one()
    return count

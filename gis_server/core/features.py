"""GeoJSON (RFC 7946) built inside PostGIS: one round trip, no Python loop over features."""
from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.engine import Connection

COORD_DECIMALS = 7  # ~1 cm; RFC 7946 §11.2 recommends not exceeding what is meaningful


def feature_collection(conn: Connection, select_sql: str, params: dict,
                       id_column: str = "id", geom_column: str = "geom") -> dict:
    """Wrap a SELECT (with an ``id`` and a ``geom`` column) into a FeatureCollection dict."""
    sql = f"""
        SELECT json_build_object(
            'type', 'FeatureCollection',
            'features', COALESCE(json_agg(json_build_object(
                'type', 'Feature',
                'id', q.{id_column},
                'geometry', ST_AsGeoJSON(q.{geom_column}, {COORD_DECIMALS})::json,
                'properties', to_jsonb(q) - '{geom_column}'
            )), '[]'::json)
        )::text
        FROM ({select_sql}) q
    """
    return json.loads(conn.execute(text(sql), params).scalar_one())


def single_feature(conn: Connection, select_sql: str, params: dict, id_column: str = "id",
                   geom_column: str = "geom") -> dict | None:
    fc = feature_collection(conn, select_sql, params, id_column, geom_column)
    return fc["features"][0] if fc["features"] else None

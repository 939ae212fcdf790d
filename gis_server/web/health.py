from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..db import get_engine

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        with get_engine().connect() as conn:
            postgis = conn.execute(text("SELECT postgis_lib_version()")).scalar_one()
            migrated = conn.execute(text("SELECT to_regclass('city') IS NOT NULL")).scalar_one()
            city = (conn.execute(text("SELECT name FROM city WHERE id = 1")).scalar()
                    if migrated else None)
    except SQLAlchemyError as exc:
        current_app.logger.warning("health check failed: %s", exc.__class__.__name__)
        return {"status": "error", "database": "unreachable"}, 503
    if not migrated:
        return {"status": "error", "database": "ok", "postgis": postgis,
                "schema": "missing: run `gis-server db migrate`"}, 503
    return {"status": "ok", "database": "ok", "postgis": postgis, "city": city}


@bp.get("/hello")
def hello():
    """Hello world of this app: the baseline the locate benchmark compares against."""
    return {"hello": "world"}

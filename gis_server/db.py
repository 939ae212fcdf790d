"""Database access: one SQLAlchemy engine per URL, one connection per request.

Views call :func:`get_db` and pass the connection to framework-free functions in
``gis_server.core``; the connection is returned to the pool when the request ends.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flask import current_app, g
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection


ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True,
                         pool_recycle=3600, connect_args={"connect_timeout": 5})


def get_engine() -> Engine:
    return engine_for(current_app.config["DATABASE_URL"])


def get_db() -> Connection:
    """The request's connection (autobegin; views commit explicitly when they write)."""
    if "db" not in g:
        g.db = get_engine().connect()
    return g.db


def close_db(_exc=None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def migrate(url: str) -> None:
    """Bring the schema at ``url`` to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine_for(url).begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def is_empty(conn: Connection) -> bool:
    """True when no city has been loaded yet."""
    return conn.execute(text("SELECT NOT EXISTS (SELECT 1 FROM city)")).scalar()


def init_app(app) -> None:
    app.teardown_appcontext(close_db)

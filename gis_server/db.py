"""Database access: one SQLAlchemy engine per URL, one connection per request.

Views call :func:`get_db` and pass the connection to framework-free functions in
``gis_server.core``; the connection is returned to the pool when the request ends.

The request's connection is *scoped*: it runs as the role ``gis_app`` with ``gis.scope`` set to
the caller's grid-code prefix, so PostgreSQL's row-level security (migration 0002) filters
every query to the caller's subtree. Connections taken straight from the engine (loaders, the
locate index, token checks) run as the owner and see everything.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flask import current_app, g
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection


ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    engine = create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True,
                           pool_recycle=3600, connect_args={"connect_timeout": 5})

    @event.listens_for(engine, "checkin")
    def _unscope(dbapi_connection, record):
        # A scoped connection must never be handed to code that expects the owner role.
        if record.info.pop("scoped", False):
            try:
                dbapi_connection.rollback()
                dbapi_connection.execute("RESET ROLE")
                dbapi_connection.execute("RESET gis.scope")
                dbapi_connection.commit()
            except Exception:
                record.invalidate()

    return engine


def scope_connection(conn: Connection, scope: str) -> None:
    """Run ``conn`` as ``gis_app`` limited to ``scope`` (a code prefix; '' = whole city)."""
    conn.execute(text("SELECT set_config('role', 'gis_app', false), "
                      "set_config('gis.scope', :scope, false)"), {"scope": scope})
    conn.commit()
    conn.connection.info["scoped"] = True


def get_engine() -> Engine:
    return engine_for(current_app.config["DATABASE_URL"])


def get_db() -> Connection:
    """The request's scoped connection (autobegin; views commit explicitly when they write)."""
    if "db" not in g:
        from .access import principal
        conn = get_engine().connect()
        try:
            scope_connection(conn, principal().scope)
        except Exception:
            conn.close()
            raise
        g.db = conn
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

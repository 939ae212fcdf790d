"""Database access: one SQLAlchemy engine per URL, one connection per request.

Views call :func:`get_db` and pass the connection to framework-free functions in
``gis_server.core``; the connection is returned to the pool when the request ends.

The request's connection is *scoped*: each of its transactions runs as the role ``gis_app``
with ``gis.scope`` set to the caller's grid-code prefix, so PostgreSQL's row-level security
(migrations 0002, 0007) filters every query to the caller's subtree. Connections taken
straight from the engine (loaders, the locate index) run as the owner and see everything.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from flask import current_app, g
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection


ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    # Capacity above the threads of a gunicorn worker (serving.WORKER_OPTIONS: 32): each
    # request holds one connection and may briefly need a second (the locate index check),
    # so a full worker never waits on its own pool. 2 workers × 64 < max_connections (200).
    # No pre-ping: it costs a round trip per checkout (~20 % of incident intake throughput).
    # Disconnects are handled optimistically instead: a statement failing on a dead
    # connection invalidates the pool, so after a database restart at most the requests
    # already holding old connections fail (JSON 500), and the next ones reconnect.
    return create_engine(url, pool_size=10, max_overflow=54, pool_pre_ping=False,
                         pool_recycle=3600, connect_args={"connect_timeout": 5})


def get_engine() -> Engine:
    return engine_for(current_app.config["DATABASE_URL"])


# Transaction-local (is_local = true): COMMIT or ROLLBACK drops both settings, so a
# connection goes back to the pool as the owner and nothing has to be reset.
SCOPE_SQL = ("SELECT set_config('role', 'gis_app', true), "
             "set_config('gis.scope', 'scope:' || %s, true)")


def scope_connection(conn: Connection, scope: str) -> None:
    """Run the rest of ``conn``'s current transaction as ``gis_app`` limited to ``scope``
    (a grid-code prefix; '' = the whole city)."""
    conn.exec_driver_sql(SCOPE_SQL, (scope,))


def _scope_each_transaction(conn: Connection) -> None:
    # Runs on BEGIN (SQLAlchemy's "begin" event), before the transaction's first statement;
    # the raw driver call starts the transaction itself, so every transaction of a request
    # connection, including those after a mid-request commit, is scoped.
    if g.get("db_owner_transaction"):
        return  # owner_autocommit(): runs as the owner
    from .access import principal
    conn.connection.driver_connection.execute(SCOPE_SQL, (principal().scope,))


def get_db() -> Connection:
    """The request's connection: every transaction on it is scoped to the caller (RLS).

    Views commit explicitly when they write (``get_db().commit()``)."""
    if "db" not in g:
        conn = get_engine().connect()
        event.listen(conn, "begin", _scope_each_transaction)
        g.db = conn
    return g.db


@contextmanager
def owner_autocommit() -> Iterator[Connection]:
    """The request's connection, as the owner (not scoped: no RLS), in autocommit: each
    statement is its own transaction — for a write that is ONE statement and must pass
    whatever the caller's scope (incident intake: a worker reports just outside their grid),
    and for the bearer-token check. One round trip per statement instead of BEGIN, scope,
    statement, COMMIT; no second pool checkout. Back to normal (scoped transactions) when
    the block ends."""
    conn = get_db()
    if conn.in_transaction():
        raise RuntimeError("owner_autocommit(): commit or roll back the request's "
                           "transaction first")
    raw = conn.connection.driver_connection
    g.db_owner_transaction = True  # the "begin" listener leaves these transactions alone
    raw.autocommit = True
    try:
        yield conn
        if conn.in_transaction():  # SQLAlchemy's bookkeeping: autocommit sends nothing
            conn.commit()
    finally:
        g.pop("db_owner_transaction", None)
        if conn.in_transaction():
            conn.rollback()
        if not raw.closed:  # (a lost connection is invalidated; the error propagates)
            raw.autocommit = False


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

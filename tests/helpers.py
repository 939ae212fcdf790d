"""Database helpers shared by fixtures and tests (importable: ``from helpers import ...``)."""
from __future__ import annotations

import os

from gis_server.db import engine_for, migrate
from gis_server.pgcluster import Cluster, create_database, drop_database


def server_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url.replace("postgresql://", "postgresql+psycopg://", 1) \
            if url.startswith("postgresql://") else url
    cluster = Cluster()
    cluster.start()
    return cluster.url()


def fresh_database(name: str, city=None) -> str:
    """Create (or recreate) database ``name`` with the schema and optionally a city."""
    from gis_server.loaders.bulk import write_city

    url = create_database(server_url(), name, drop_first=True)
    migrate(url)
    if city is not None:
        with engine_for(url).begin() as conn:
            write_city(conn, city, show_progress=False)
    return url


def dispose_database(url: str, name: str) -> None:
    engine_for(url).dispose()
    drop_database(server_url(), name)


def authed_client(app, token: str | None):
    """A Flask test client sending ``Authorization: Bearer <token>`` (none if no token)."""
    client = app.test_client()
    if token:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client

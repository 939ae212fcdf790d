"""The GeoAlchemy2 models describe exactly the schema the Alembic migrations build."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gis_server.models import include_object, metadata


def test_models_match_migrations(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        differences = compare_metadata(context, metadata)
    assert differences == [], "models.py and the migrations disagree:\n" + "\n".join(
        str(d)[:200] for d in differences)

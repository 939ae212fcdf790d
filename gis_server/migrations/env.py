"""Alembic environment: the URL comes from the caller (``gis_server.db.migrate``) or config."""
from alembic import context
from sqlalchemy import create_engine, pool

from gis_server.models import metadata

# PostGIS owns these tables/views; partitions of ``positions`` are created at run time.
_IGNORED_PREFIXES = ("spatial_ref_sys", "positions_", "topology", "layer")


def include_object(obj, name, type_, reflected, compare_to):
    if type_ == "table" and (name.startswith(_IGNORED_PREFIXES) or name == "positions"):
        return False
    return True


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        connectable = create_engine(url, poolclass=pool.NullPool)
        with connectable.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      include_object=include_object, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()

"""Live positions, write cost: fewer indexes to maintain per fix

Every stored fix inserts one ``positions`` row and moves one ``latest_positions`` row; each
index on them is maintained per row. What the readers need (checked with EXPLAIN):

* ``positions``: tracks filter on ``worker_id`` + time (the primary key); patrol coverage,
  exports and the analytics view filter on a ``recorded_at`` range (partition pruning, then
  ``ix_positions_recorded_at``); the OGC collection ``positions`` pages in
  ``(recorded_at, worker_id)`` order (``ix_positions_recorded_at`` again). Nothing searches the
  history by location alone: a ``bbox`` on the OGC collection is applied as a filter while
  walking the time order. The GiST index ``idx_positions_geom`` (about as large as the table's
  primary key, the most expensive index to maintain per point) is dropped.
* ``latest_positions`` (one row per worker, ~10,000 rows): read by worker id, or scanned
  whole (the live map, the status sweep, the OGC ``worker_positions`` collection). Its GiST
  index on ``geom`` and btree on ``recorded_at`` are dropped, and the table gets
  ``fillfactor = 50`` (rewritten now, so existing pages get the room too): the upsert that
  moves a worker then changes no indexed column, so it is a HOT update (no index entry at
  all, the old version pruned in place).
* ``positions.worker_id`` loses its foreign key. The referential check ran once per stored
  fix (an index probe and a row lock on ``workers``, WAL-logged: ~40 % of the history insert).
  Integrity is kept by the ingest statement itself: every worker with a stored fix also goes
  through the ``latest_positions`` upsert in the same statement, whose foreign key (checked on
  insert) or row lock (on update) orders it against a concurrent deletion of the worker; the
  ``ON DELETE CASCADE`` becomes a statement-level trigger on ``workers``
  (``workers_delete_positions``) that deletes the history of deleted workers after the
  cascade on ``latest_positions`` (so after any ingest holding that row has committed).
  Rows written by hand (SQL outside :func:`gis_server.core.positions.ingest`) are not checked.

Revision ID: 0009
Revises: 0008
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE positions DROP CONSTRAINT IF EXISTS positions_worker_id_fkey")
    op.execute("""
        CREATE FUNCTION positions_delete_worker_history() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        BEGIN
            DELETE FROM positions p USING deleted d WHERE p.worker_id = d.id;
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER workers_delete_positions AFTER DELETE ON workers "
               "REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT "
               "EXECUTE FUNCTION positions_delete_worker_history()")
    op.execute("DROP INDEX IF EXISTS idx_positions_geom")
    op.execute("DROP INDEX IF EXISTS idx_latest_positions_geom")
    op.execute("DROP INDEX IF EXISTS ix_latest_positions_recorded_at")
    op.execute("ALTER TABLE latest_positions SET (fillfactor = 50)")
    # (rewrite the existing rows so that their pages get the free space: a ~10,000-row table)
    op.execute("CLUSTER latest_positions USING pk_latest_positions")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS workers_delete_positions ON workers")
    op.execute("DROP FUNCTION IF EXISTS positions_delete_worker_history()")
    op.execute("DELETE FROM positions p WHERE NOT EXISTS "
               "(SELECT 1 FROM workers w WHERE w.id = p.worker_id)")
    op.execute("ALTER TABLE positions ADD CONSTRAINT positions_worker_id_fkey "
               "FOREIGN KEY (worker_id) REFERENCES workers(id) ON DELETE CASCADE")
    op.execute("ALTER TABLE latest_positions RESET (fillfactor)")
    op.execute("CREATE INDEX IF NOT EXISTS ix_latest_positions_recorded_at "
               "ON latest_positions (recorded_at)")
    op.execute("CREATE INDEX IF NOT EXISTS idx_latest_positions_geom "
               "ON latest_positions USING gist (geom)")
    op.execute("CREATE INDEX IF NOT EXISTS idx_positions_geom ON positions USING gist (geom)")

"""Live positions (issue 7): status/geofence state, events, rejection counters, device_status

* ``latest_positions`` gains what status and geofence events need: ``in_assigned`` (inside one
  of the worker's assigned grids), ``state`` (last announced online/offline/stopped flags),
  ``still_since``/``still_geom`` (where and since when the worker has not moved), altitude and
  the raw attributes.
* ``position_events``: grid_exit / grid_enter / offline / online / stopped, scoped by RLS
  through the worker (like ``positions``).
* ``position_rejections``: per day, reason and worker, how many fixes the filtering rules
  refused (never silently lost); unknown devices are counted with worker_id NULL.
* ``ensure_position_partition(day)`` becomes SECURITY DEFINER (the request role ``gis_app``
  does not own ``positions``), tolerates concurrent creation, and moves rows that the DEFAULT
  partition already holds for that day into the new partition.
* ``device_status``: a documented view of each worker's device state (online/offline/unknown
  by staleness, default 600 s as in Traccar; override per session with ``gis.offline_after``).

Revision ID: 0004
Revises: 0003
"""
from alembic import op  # noqa: F401

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

SCOPED_BY_WORKER = "gis_scope() = '' OR worker_id IN (SELECT id FROM workers)"


def upgrade() -> None:
    op.execute("""
        ALTER TABLE latest_positions
            ADD COLUMN altitude double precision,
            ADD COLUMN in_assigned boolean,
            ADD COLUMN received_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN still_since timestamptz,
            ADD COLUMN still_geom geometry(Point, 4326),
            ADD COLUMN state text NOT NULL DEFAULT 'online',
            ADD COLUMN attributes jsonb
    """)
    op.execute("ALTER TABLE latest_positions ADD CONSTRAINT ck_latest_positions_state "
               "CHECK (state IN ('online', 'offline', 'stopped'))")
    op.execute("CREATE INDEX ix_latest_positions_recorded_at ON latest_positions (recorded_at)")

    op.execute("""
        CREATE TABLE position_events (
            id          bigserial PRIMARY KEY,
            worker_id   integer NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
            kind        text NOT NULL CHECK (kind IN ('grid_exit', 'grid_enter', 'offline',
                                                      'online', 'stopped')),
            at          timestamptz NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            grid_code   varchar(15),
            geom        geometry(Point, 4326),
            data        jsonb NOT NULL DEFAULT '{}'::jsonb
        )
    """)
    op.execute("CREATE INDEX ix_position_events_at ON position_events (at)")
    op.execute("CREATE INDEX ix_position_events_worker_at ON position_events (worker_id, at)")

    op.execute("""
        CREATE TABLE position_rejections (
            day         date NOT NULL,
            reason      text NOT NULL,
            worker_id   integer REFERENCES workers(id) ON DELETE CASCADE,
            device_id   text NOT NULL DEFAULT '',
            count       bigint NOT NULL DEFAULT 0,
            last_at     timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE UNIQUE INDEX ux_position_rejections ON position_rejections "
               "(day, reason, coalesce(worker_id, 0), device_id)")

    for table in ("position_events", "position_rejections"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY scope ON {table} TO gis_app USING ({SCOPED_BY_WORKER}) "
                   f"WITH CHECK ({SCOPED_BY_WORKER})")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON position_events, position_rejections "
               "TO gis_app")
    op.execute("GRANT USAGE, SELECT ON SEQUENCE position_events_id_seq TO gis_app")

    op.execute("""
        CREATE OR REPLACE FUNCTION ensure_position_partition(day date) RETURNS text
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            part text := 'positions_' || to_char(day, 'YYYYMMDD');
            lo timestamptz := day::timestamptz;
            hi timestamptz := (day + 1)::timestamptz;
        BEGIN
            IF to_regclass(part) IS NOT NULL THEN
                RETURN part;
            END IF;
            -- One creator at a time per day; the others wait and then find it.
            PERFORM pg_advisory_xact_lock(hashtext('positions'), (day - date '2000-01-01'));
            IF to_regclass(part) IS NOT NULL THEN
                RETURN part;
            END IF;
            IF EXISTS (SELECT 1 FROM positions_default
                       WHERE recorded_at >= lo AND recorded_at < hi) THEN
                -- Rows for this day already sit in DEFAULT: move them into the new partition.
                EXECUTE format('CREATE TABLE %I (LIKE positions INCLUDING DEFAULTS)', part);
                EXECUTE format('INSERT INTO %I SELECT * FROM positions_default '
                               'WHERE recorded_at >= %L AND recorded_at < %L', part, lo, hi);
                DELETE FROM positions_default WHERE recorded_at >= lo AND recorded_at < hi;
                EXECUTE format('ALTER TABLE positions ATTACH PARTITION %I '
                               'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF positions '
                               'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            END IF;
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO gis_app', part);
            RETURN part;
        END $$
    """)
    op.execute("GRANT EXECUTE ON FUNCTION ensure_position_partition(date) TO gis_app")

    op.execute("""
        CREATE VIEW device_status WITH (security_invoker = true) AS
        SELECT w.id AS worker_id, w.device_id, w.role, w.active,
               lp.recorded_at AS last_fix_at, lp.received_at AS last_seen_at,
               CASE
                   WHEN lp.worker_id IS NULL THEN 'unknown'
                   WHEN now() - lp.recorded_at > make_interval(secs => coalesce(
                        nullif(current_setting('gis.offline_after', true), '')::float8, 600))
                       THEN 'offline'
                   ELSE 'online'
               END AS status,
               lp.state, lp.in_assigned, lp.battery, g.code AS grid_code,
               lp.geom
        FROM workers w
        LEFT JOIN latest_positions lp ON lp.worker_id = w.id
        LEFT JOIN grids g ON g.id = lp.grid_id
    """)
    op.execute("COMMENT ON VIEW device_status IS "
               "'One row per worker: last fix, status by staleness (online/offline/unknown; "
               "gis.offline_after seconds, default 600 as in Traccar), current grid, "
               "inside an assigned grid or not.'")
    op.execute("GRANT SELECT ON device_status TO gis_app")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS device_status")
    op.execute("DROP TABLE IF EXISTS position_rejections")
    op.execute("DROP TABLE IF EXISTS position_events")
    op.execute("DROP INDEX IF EXISTS ix_latest_positions_recorded_at")
    op.execute("ALTER TABLE latest_positions DROP CONSTRAINT IF EXISTS "
               "ck_latest_positions_state")
    op.execute("""
        ALTER TABLE latest_positions
            DROP COLUMN IF EXISTS altitude, DROP COLUMN IF EXISTS in_assigned,
            DROP COLUMN IF EXISTS received_at, DROP COLUMN IF EXISTS still_since,
            DROP COLUMN IF EXISTS still_geom, DROP COLUMN IF EXISTS state,
            DROP COLUMN IF EXISTS attributes
    """)
    op.execute("""
        CREATE OR REPLACE FUNCTION ensure_position_partition(day date) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            part text := 'positions_' || to_char(day, 'YYYYMMDD');
        BEGIN
            IF to_regclass(part) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF positions FOR VALUES FROM (%L) TO (%L)',
                    part, day::timestamptz, (day + 1)::timestamptz);
            END IF;
            RETURN part;
        END $$
    """)

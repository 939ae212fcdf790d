"""city data model

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 20:15:15.138760
"""
from alembic import op
import sqlalchemy as sa
import geoalchemy2
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('city',
    sa.Column('id', sa.SmallInteger(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('county_code', sa.String(length=6), nullable=False),
    sa.Column('metric_srid', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_city_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_city'))
    )
    op.create_table('grid_generations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grid_generations'))
    )
    op.create_table('grid_state',
    sa.Column('id', sa.SmallInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_grid_state_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grid_state'))
    )
    op.create_table('grids',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=15), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('level', sa.String(length=10), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('area_m2', sa.Float(), nullable=False),
    sa.Column('target_households', sa.Integer(), nullable=True),
    sa.Column('generation_id', sa.Integer(), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('valid_to', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("code ~ '^[0-9]{14,15}$'", name=op.f('ck_grids_code_digits')),
    sa.CheckConstraint("level IN ('district', 'street', 'community', 'unit')", name=op.f('ck_grids_level')),
    sa.CheckConstraint('valid_to IS NULL OR valid_to > valid_from', name=op.f('ck_grids_validity')),
    sa.ForeignKeyConstraint(['generation_id'], ['grid_generations.id'], name=op.f('fk_grids_generation_id_grid_generations')),
    sa.ForeignKeyConstraint(['parent_id'], ['grids.id'], name=op.f('fk_grids_parent_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grids')),
    sa.UniqueConstraint('code', 'valid_from', name=op.f('uq_grids_code_valid_from'))
    )
    op.create_index('ix_grids_level_current', 'grids', ['level'], unique=False, postgresql_where=sa.text('valid_to IS NULL'))
    op.create_index('ix_grids_parent_id', 'grids', ['parent_id'], unique=False)
    op.create_index('ux_grids_current_code', 'grids', ['code'], unique=True, postgresql_where=sa.text('valid_to IS NULL'))
    op.create_table('buildings',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('anchor', geoalchemy2.types.Geometry(geometry_type='POINT', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('floors', sa.SmallInteger(), nullable=True),
    sa.Column('use', sa.Text(), nullable=True),
    sa.Column('osm_id', sa.BigInteger(), nullable=True),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_buildings_grid_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_buildings'))
    )
    op.create_index(op.f('ix_buildings_grid_id'), 'buildings', ['grid_id'], unique=False)
    op.create_table('departments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_departments_grid_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_departments')),
    sa.UniqueConstraint('code', name=op.f('uq_departments_code'))
    )
    op.create_table('facilities',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='POINT', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('is_key_place', sa.Boolean(), nullable=False),
    sa.Column('osm_id', sa.BigInteger(), nullable=True),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_facilities_grid_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_facilities'))
    )
    op.create_index(op.f('ix_facilities_grid_id'), 'facilities', ['grid_id'], unique=False)
    op.create_table('grid_parts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=10), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='POLYGON', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_grid_parts_grid_id_grids'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grid_parts'))
    )
    op.create_index(op.f('ix_grid_parts_grid_id'), 'grid_parts', ['grid_id'], unique=False)
    op.create_table('households',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('building_id', sa.BigInteger(), nullable=False),
    sa.Column('unit', sa.Text(), nullable=True),
    sa.Column('room', sa.Text(), nullable=True),
    sa.Column('head_name', sa.Text(), nullable=True),
    sa.Column('size', sa.SmallInteger(), nullable=False),
    sa.Column('is_rental', sa.Boolean(), nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['building_id'], ['buildings.id'], name=op.f('fk_households_building_id_buildings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_households_grid_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_households'))
    )
    op.create_index(op.f('ix_households_building_id'), 'households', ['building_id'], unique=False)
    op.create_index(op.f('ix_households_grid_id'), 'households', ['grid_id'], unique=False)
    op.create_table('workers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('department_id', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.CheckConstraint("role IN ('grid_admin', 'coordinator', 'police', 'firefighter', 'supervisor', 'volunteer', 'leader')", name=op.f('ck_workers_role')),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], name=op.f('fk_workers_department_id_departments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers')),
    sa.UniqueConstraint('device_id', name=op.f('uq_workers_device_id'))
    )
    op.create_table('incidents',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('category', sa.String(length=16), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='POINT', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('reporter', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='reported', nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.Column('department_id', sa.Integer(), nullable=True),
    sa.Column('assignee_id', sa.Integer(), nullable=True),
    sa.Column('reported_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('flags', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('version', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.CheckConstraint("source IN ('patrol', 'public', 'video', 'referral')", name=op.f('ck_incidents_source')),
    sa.ForeignKeyConstraint(['assignee_id'], ['workers.id'], name=op.f('fk_incidents_assignee_id_workers')),
    sa.ForeignKeyConstraint(['department_id'], ['departments.id'], name=op.f('fk_incidents_department_id_departments')),
    sa.ForeignKeyConstraint(['grid_id'], ['grids.id'], name=op.f('fk_incidents_grid_id_grids')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents'))
    )
    op.create_index(op.f('ix_incidents_grid_id'), 'incidents', ['grid_id'], unique=False)
    op.create_index('ix_incidents_reported_at', 'incidents', ['reported_at'], unique=False)
    op.create_index('ix_incidents_status', 'incidents', ['status'], unique=False)
    op.create_table('latest_positions',
    sa.Column('worker_id', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='POINT', srid=4326, dimension=2, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.Column('speed', sa.Float(), nullable=True),
    sa.Column('bearing', sa.Float(), nullable=True),
    sa.Column('accuracy', sa.Float(), nullable=True),
    sa.Column('battery', sa.Float(), nullable=True),
    sa.Column('grid_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], name=op.f('fk_latest_positions_worker_id_workers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_latest_positions'))
    )
    op.create_table('persons',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('household_id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('id_number', sa.String(length=18), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('gender', sa.String(length=1), nullable=True),
    sa.Column('birth_date', sa.DateTime(), nullable=True),
    sa.Column('category', sa.String(length=12), nullable=False),
    sa.Column('relation', sa.Text(), nullable=True),
    sa.Column('special_group', sa.Text(), nullable=True),
    sa.CheckConstraint("category IN ('registered', 'floating', 'special')", name=op.f('ck_persons_category')),
    sa.ForeignKeyConstraint(['household_id'], ['households.id'], name=op.f('fk_persons_household_id_households'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_persons'))
    )
    op.create_index(op.f('ix_persons_household_id'), 'persons', ['household_id'], unique=False)
    op.create_table('worker_grids',
    sa.Column('worker_id', sa.Integer(), nullable=False),
    sa.Column('grid_code', sa.String(length=15), nullable=False),
    sa.Column('is_responsible', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], name=op.f('fk_worker_grids_worker_id_workers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('worker_id', 'grid_code', name=op.f('pk_worker_grids'))
    )
    op.create_index('ix_worker_grids_grid_code', 'worker_grids', ['grid_code'], unique=False)
    op.create_table('incident_events',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('incident_id', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('actor', sa.Text(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_incident_events_incident_id_incidents'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incident_events'))
    )
    op.create_index(op.f('ix_incident_events_incident_id'), 'incident_events', ['incident_id'], unique=False)

    op.execute("INSERT INTO grid_state (id, version) VALUES (1, 0)")
    # Any change to grids or worker assignments invalidates in-process lookup caches.
    op.execute("""
        CREATE FUNCTION bump_grid_state() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE grid_state SET version = version + 1 WHERE id = 1;
            RETURN NULL;
        END $$;
    """)
    for table in ("grids", "worker_grids", "workers"):
        op.execute(f"""
            CREATE TRIGGER {table}_bump_grid_state
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION bump_grid_state()
        """)

    # Position history: natively partitioned by day; partitions are created on demand by
    # ensure_position_partition(day) and a DEFAULT partition catches anything else, so an
    # insert never fails for want of a partition.
    op.execute("""
        CREATE TABLE positions (
            worker_id   integer NOT NULL REFERENCES workers(id) ON DELETE CASCADE,
            recorded_at timestamptz NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            geom        geometry(Point, 4326) NOT NULL,
            speed       double precision,
            bearing     double precision,
            altitude    double precision,
            accuracy    double precision,
            battery     double precision,
            grid_id     integer,
            attributes  jsonb,
            PRIMARY KEY (worker_id, recorded_at)
        ) PARTITION BY RANGE (recorded_at)
    """)
    op.execute("CREATE TABLE positions_default PARTITION OF positions DEFAULT")
    op.execute("CREATE INDEX idx_positions_geom ON positions USING gist (geom)")
    op.execute("CREATE INDEX ix_positions_recorded_at ON positions (recorded_at)")
    op.execute("""
        CREATE FUNCTION ensure_position_partition(day date) RETURNS text
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
        END $$;
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ensure_position_partition(date)")
    op.execute("DROP TABLE IF EXISTS positions CASCADE")
    for table in ("grids", "worker_grids", "workers"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_bump_grid_state ON {table}")
    op.execute("DROP FUNCTION IF EXISTS bump_grid_state()")
    op.drop_index(op.f('ix_incident_events_incident_id'), table_name='incident_events')
    op.drop_table('incident_events')
    op.drop_index('ix_worker_grids_grid_code', table_name='worker_grids')
    op.drop_table('worker_grids')
    op.drop_index(op.f('ix_persons_household_id'), table_name='persons')
    op.drop_table('persons')
    op.drop_table('latest_positions')
    op.drop_index('ix_incidents_status', table_name='incidents')
    op.drop_index('ix_incidents_reported_at', table_name='incidents')
    op.drop_index(op.f('ix_incidents_grid_id'), table_name='incidents')
    op.drop_table('incidents')
    op.drop_table('workers')
    op.drop_index(op.f('ix_households_grid_id'), table_name='households')
    op.drop_index(op.f('ix_households_building_id'), table_name='households')
    op.drop_table('households')
    op.drop_index(op.f('ix_grid_parts_grid_id'), table_name='grid_parts')
    op.drop_table('grid_parts')
    op.drop_index(op.f('ix_facilities_grid_id'), table_name='facilities')
    op.drop_table('facilities')
    op.drop_table('departments')
    op.drop_index(op.f('ix_buildings_grid_id'), table_name='buildings')
    op.drop_table('buildings')
    op.drop_index('ux_grids_current_code', table_name='grids', postgresql_where=sa.text('valid_to IS NULL'))
    op.drop_index('ix_grids_parent_id', table_name='grids')
    op.drop_index('ix_grids_level_current', table_name='grids', postgresql_where=sa.text('valid_to IS NULL'))
    op.drop_table('grids')
    op.drop_table('grid_state')
    op.drop_table('grid_generations')
    op.drop_table('city')

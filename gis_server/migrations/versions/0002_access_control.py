"""access control: users, tokens, audit log; row-level security scoped to the grid hierarchy

Request connections run as the NOLOGIN role ``gis_app`` with ``gis.scope`` set to the caller's
code prefix (see gis_server/access.py). The policies below are the one place where scope is
enforced: a row outside the scope is invisible, so the API answers 404 without revealing it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:23:42.215668
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('username', sa.Text(), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('object_type', sa.String(length=32), nullable=True),
    sa.Column('object_id', sa.Text(), nullable=True),
    sa.Column('remote_addr', sa.Text(), nullable=True),
    sa.Column('endpoint', sa.Text(), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'], unique=False)
    op.create_index('ix_audit_log_user_id', 'audit_log', ['user_id'], unique=False)
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.Text(), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('scope_code', sa.String(length=15), nullable=True),
    sa.Column('password_hash', sa.Text(), nullable=True),
    sa.Column('worker_id', sa.Integer(), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("role IN ('admin', 'command_center', 'street_admin', 'community_admin', 'grid_worker', 'planner', 'analyst', 'reporter')", name=op.f('ck_users_role')),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], name=op.f('fk_users_worker_id_workers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=12), nullable=False),
    sa.Column('label', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_index(op.f('ix_api_tokens_user_id'), 'api_tokens', ['user_id'], unique=False)

    op.execute("""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gis_app') THEN
                CREATE ROLE gis_app NOLOGIN;
            END IF;
        END $$
    """)
    op.execute("GRANT gis_app TO CURRENT_USER")
    op.execute("GRANT USAGE ON SCHEMA public TO gis_app")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gis_app")
    op.execute("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO gis_app")
    op.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public "
               "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gis_app")
    op.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public "
               "GRANT USAGE, SELECT ON SEQUENCES TO gis_app")

    # Audit log: append-only for everybody, the table owner included.
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM gis_app")
    op.execute("""
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only';
        END $$
    """)
    op.execute("""
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """)
    op.execute("""
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
    """)

    # Scope: '' = whole city; '110108001' = a street's subtree; unset = nothing (fail closed).
    op.execute("""
        CREATE FUNCTION gis_scope() RETURNS text LANGUAGE sql STABLE AS
        $$ SELECT current_setting('gis.scope', true) $$
    """)
    op.execute("""
        CREATE FUNCTION in_scope(code text) RETURNS boolean LANGUAGE sql STABLE AS
        $$ SELECT left(code, length(gis_scope())) = gis_scope() $$
    """)
    op.execute("""
        CREATE FUNCTION grid_prefix_length(level text, code text) RETURNS integer
        LANGUAGE sql IMMUTABLE AS $$
            SELECT CASE level WHEN 'district' THEN 6 WHEN 'street' THEN 9
                              WHEN 'community' THEN 12 ELSE length(code) END
        $$
    """)
    in_scope_grid = "(SELECT id FROM grids WHERE in_scope(code))"
    policies = {
        # A grid is visible inside the subtree, and so are its ancestors (names on a locate).
        "grids": "in_scope(code) OR starts_with(coalesce(gis_scope(), '-'), "
                 "left(code, grid_prefix_length(level, code)))",
        "grid_parts": "grid_id IN (SELECT id FROM grids)",
        "buildings": f"gis_scope() = '' OR grid_id IN {in_scope_grid}",
        "households": f"gis_scope() = '' OR grid_id IN {in_scope_grid}",
        "persons": "gis_scope() = '' OR household_id IN (SELECT id FROM households)",
        "facilities": f"gis_scope() = '' OR grid_id IN {in_scope_grid}",
        "incidents": f"gis_scope() = '' OR grid_id IN {in_scope_grid}",
        "incident_events": "incident_id IN (SELECT id FROM incidents)",
        "worker_grids": "in_scope(grid_code)",
        "workers": "gis_scope() = '' OR EXISTS (SELECT 1 FROM worker_grids wg "
                   "WHERE wg.worker_id = workers.id AND in_scope(wg.grid_code))",
        "latest_positions": "gis_scope() = '' OR worker_id IN (SELECT id FROM workers)",
        "positions": "gis_scope() = '' OR worker_id IN (SELECT id FROM workers)",
    }
    for table, rule in policies.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY scope ON {table} TO gis_app USING ({rule}) "
                   f"WITH CHECK ({rule})")


def downgrade() -> None:
    for table in ("grids", "grid_parts", "buildings", "households", "persons", "facilities",
                  "incidents", "incident_events", "worker_grids", "workers", "latest_positions",
                  "positions"):
        op.execute(f"DROP POLICY IF EXISTS scope ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS grid_prefix_length(text, text)")
    op.execute("DROP FUNCTION IF EXISTS in_scope(text)")
    op.execute("DROP FUNCTION IF EXISTS gis_scope()")
    op.execute("DROP TABLE IF EXISTS audit_log")  # triggers go with it
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_index(op.f('ix_api_tokens_user_id'), table_name='api_tokens')
    op.drop_table('api_tokens')
    op.drop_table('users')

"""Planning drafts and generations (issue 5)

Plans are drafts of a grid level copied from the current generation; ``plan_grids`` holds the
draft geometries (status kept / changed / new / removed against the base grid row),
``plan_edits`` an undo log (each edit stores the rows it replaced), ``retired_codes`` every code
a publish retired (never reused). Row-level security scopes plans like grids: a plan is visible
to callers whose scope contains the plan's scope or lies inside it.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import geoalchemy2
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'plans',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('level', sa.String(10), nullable=False),
        sa.Column('scope_code', sa.String(15), nullable=False, server_default=''),
        sa.Column('status', sa.String(10), nullable=False, server_default='draft'),
        sa.Column('base_generation_id', sa.Integer(),
                  sa.ForeignKey('grid_generations.id', name='fk_plans_base_generation'),
                  nullable=False),
        sa.Column('published_generation_id', sa.Integer(),
                  sa.ForeignKey('grid_generations.id', name='fk_plans_published_generation'),
                  nullable=True),
        sa.Column('version', sa.Integer(), nullable=False, server_default=sa.text('1')),
        sa.Column('created_by', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('settings', postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"),
                  nullable=False),
        sa.CheckConstraint("level IN ('street', 'community', 'unit')", name='ck_plans_level'),
        sa.CheckConstraint("status IN ('draft', 'published', 'discarded')",
                           name='ck_plans_status'),
    )
    op.create_table(
        'plan_grids',
        sa.Column('plan_id', sa.Integer(), sa.ForeignKey('plans.id', ondelete='CASCADE',
                                                         name='fk_plan_grids_plan'),
                  nullable=False),
        sa.Column('code', sa.String(15), nullable=False),
        sa.Column('name', sa.Text(), nullable=False, server_default=''),
        sa.Column('level', sa.String(10), nullable=False),
        sa.Column('parent_code', sa.String(15), nullable=True),
        sa.Column('geom', geoalchemy2.types.Geometry(geometry_type='MULTIPOLYGON', srid=4326,
                                                     spatial_index=True), nullable=True),
        sa.Column('status', sa.String(10), nullable=False),
        sa.Column('base_grid_id', sa.Integer(), sa.ForeignKey('grids.id',
                                                              name='fk_plan_grids_base'),
                  nullable=True),
        sa.Column('target_households', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('plan_id', 'code', name='pk_plan_grids'),
        sa.CheckConstraint("status IN ('kept', 'changed', 'new', 'removed')",
                           name='ck_plan_grids_status'),
        sa.CheckConstraint("code ~ '^[0-9]{14,15}$'", name='ck_plan_grids_code_digits'),
        sa.CheckConstraint("status = 'removed' OR geom IS NOT NULL",
                           name='ck_plan_grids_geom'),
    )
    op.create_table(
        'plan_edits',
        sa.Column('id', sa.BigInteger(), primary_key=True),
        sa.Column('plan_id', sa.Integer(), sa.ForeignKey('plans.id', ondelete='CASCADE',
                                                         name='fk_plan_edits_plan'),
                  nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('actor', sa.Text(), nullable=True),
        sa.Column('action', sa.String(24), nullable=False),
        sa.Column('codes', postgresql.ARRAY(sa.String(15)), nullable=False),
        # The plan_grids rows (geometry as hex EWKB) these codes had before the edit.
        sa.Column('before', postgresql.JSONB(), nullable=False),
    )
    op.create_index('ix_plan_edits_plan_id', 'plan_edits', ['plan_id', 'id'])
    op.create_table(
        'retired_codes',
        sa.Column('code', sa.String(15), primary_key=True),
        sa.Column('retired_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('generation_id', sa.Integer(),
                  sa.ForeignKey('grid_generations.id', name='fk_retired_codes_generation'),
                  nullable=True),
        sa.Column('plan_id', sa.Integer(), sa.ForeignKey('plans.id', ondelete='SET NULL',
                                                         name='fk_retired_codes_plan'),
                  nullable=True),
    )
    # Visible when the caller's scope contains the plan's area or lies inside it.
    plan_rule = ("in_scope(scope_code) OR starts_with(coalesce(gis_scope(), '-'), scope_code)")
    grid_rule = ("plan_id IN (SELECT id FROM plans) AND (in_scope(code) OR starts_with("
                 "coalesce(gis_scope(), '-'), left(code, grid_prefix_length(level, code))))")
    policies = {
        "plans": plan_rule,
        "plan_grids": grid_rule,
        "plan_edits": "plan_id IN (SELECT id FROM plans)",
        "retired_codes": "true",
    }
    for table, rule in policies.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY scope ON {table} TO gis_app USING ({rule}) "
                   f"WITH CHECK ({rule})")
    for table in policies:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO gis_app")
    op.execute("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO gis_app")


def downgrade() -> None:
    for table in ("retired_codes", "plan_edits", "plan_grids", "plans"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")

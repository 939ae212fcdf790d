"""Row-level security: spatial indexes usable under RLS, and an unforgeable scope marker

Revision ID: 0007
Revises: 0006

1. Scope marker. Request transactions set ``gis.scope`` transaction-locally (SET LOCAL
   semantics), and once a custom setting has existed on a connection PostgreSQL reports it as
   '' — which 0002 reads as "the whole city". From now on the application writes
   ``scope:<prefix>`` and ``gis_scope()`` returns NULL (nothing visible: fail closed) unless
   that marker is present, so a forgotten or reset setting can never widen a scope.

2. LEAKPROOF spatial predicates (below).

With row-level security on, PostgreSQL only uses an index for a query condition whose
operator function is LEAKPROOF (otherwise the condition must run after the policy, on every
row: a sequential scan of 300,000 buildings for a bbox). PostGIS ships its operators as not
leakproof because a malformed or mixed-SRID geometry raises an error that could, in
principle, reveal a hidden row. Our geometry columns are typmod-constrained to
geometry(<type>, 4326) and validated on write, so those errors cannot be triggered by hidden
rows; we mark the predicates the API uses as LEAKPROOF. This needs a superuser (the embedded
cluster's owner is one); on a server where we are not, the migration leaves them as they are
and says so (everything still works, bbox queries by scoped roles are just slower).
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

FUNCTIONS = [
    "geometry_overlaps(geometry, geometry)",        # &&
    "geometry_contains(geometry, geometry)",        # ~
    "geometry_within(geometry, geometry)",          # @
    "geometry_distance_centroid(geometry, geometry)",  # <-> (KNN)
    "st_intersects(geometry, geometry)",
    "st_contains(geometry, geometry)",
    "st_covers(geometry, geometry)",
    "st_within(geometry, geometry)",
    "st_dwithin(geometry, geometry, double precision)",
]


def _set(leakproof: bool) -> None:
    flag = "LEAKPROOF" if leakproof else "NOT LEAKPROOF"
    statements = "; ".join(f"ALTER FUNCTION {fn} {flag}" for fn in FUNCTIONS)
    op.execute(f"""
        DO $$ BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                {statements};
            ELSE
                RAISE NOTICE 'not a superuser: PostGIS predicates stay NOT LEAKPROOF, '
                             'so spatial indexes are not used under row-level security';
            END IF;
        END $$
    """)


def upgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION gis_scope() RETURNS text LANGUAGE sql STABLE AS $$
            SELECT CASE WHEN current_setting('gis.scope', true) LIKE 'scope:%'
                        THEN substr(current_setting('gis.scope', true), 7) END
        $$
    """)
    _set(True)


def downgrade() -> None:
    _set(False)
    op.execute("""
        CREATE OR REPLACE FUNCTION gis_scope() RETURNS text LANGUAGE sql STABLE AS
        $$ SELECT current_setting('gis.scope', true) $$
    """)

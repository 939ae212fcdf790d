"""Vector-tile performance: a stored Web Mercator footprint and a building density table

Revision ID: 0008
Revises: 0007

1. ``buildings.geom_3857``: ``GENERATED ALWAYS AS (ST_Transform(geom, 3857)) STORED`` (ST_Transform
   is IMMUTABLE in PostGIS 3) with its own GiST index, so a tile selects and clips footprints
   without transforming every one of them per request.

2. ``building_density``: the number of buildings per (density cell, unit grid). A density cell
   is a square of 64 tile units at zoom 14 (WORLD / 2^14 / 64 ≈ 38.2 m), indexed from the
   Web Mercator top-left corner (``cx``, ``cy``), so that at zoom z ≤ 14 the 64-unit cells of
   the tile grid are unions of 2^(14-z) × 2^(14-z) base cells (``cx >> (14 - z)``). Building
   tiles at zoom ≤ 14 are drawn from it (gis_server/core/tiles.py) instead of 35,000 footprints.
   Rows carry the building's ``grid_id`` and the same row-level-security policy as
   ``buildings``, so a scoped caller counts only the buildings it may see. The table is kept
   exact by statement-level triggers on ``buildings`` (INSERT / UPDATE / DELETE with transition
   tables, TRUNCATE) running as the table owner (SECURITY DEFINER), so COPY loads, the loader's
   grid assignment and plan moves all keep it current.
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

WORLD_M = 40075016.68557849
CELL_M = WORLD_M / (1 << 14) / 64  # 64 tile units at zoom 14

# The cell of an anchor (EPSG:4326 point) — the same expression everywhere.
CX = f"floor((ST_X(ST_Transform({{0}}, 3857)) + {WORLD_M / 2!r}) / {CELL_M!r})::integer"
CY = f"floor(({WORLD_M / 2!r} - ST_Y(ST_Transform({{0}}, 3857))) / {CELL_M!r})::integer"


def _cells(table: str) -> str:
    return (f"SELECT {CX.format('anchor')} AS cx, {CY.format('anchor')} AS cy, grid_id, "
            f"count(*)::integer AS n FROM {table} GROUP BY 1, 2, 3")


def upgrade() -> None:
    op.execute("ALTER TABLE buildings ADD COLUMN geom_3857 geometry(MultiPolygon, 3857) "
               "GENERATED ALWAYS AS (ST_Transform(geom, 3857)) STORED")
    op.execute("CREATE INDEX idx_buildings_geom_3857 ON buildings USING gist (geom_3857)")

    op.execute(f"""
        CREATE TABLE building_density (
            cx integer NOT NULL,
            cy integer NOT NULL,
            grid_id integer REFERENCES grids(id) ON DELETE CASCADE,
            n integer NOT NULL CHECK (n > 0),
            geom geometry(Point, 3857) NOT NULL GENERATED ALWAYS AS (ST_MakePoint(
                (cx + 0.5) * {CELL_M!r} - {WORLD_M / 2!r},
                {WORLD_M / 2!r} - (cy + 0.5) * {CELL_M!r})::geometry(Point, 3857)) STORED,
            CONSTRAINT uq_building_density UNIQUE NULLS NOT DISTINCT (cx, cy, grid_id)
        )
    """)
    op.execute("CREATE INDEX idx_building_density_geom ON building_density USING gist (geom)")
    op.execute("CREATE INDEX ix_building_density_grid_id ON building_density (grid_id)")
    op.execute("COMMENT ON TABLE building_density IS 'Buildings per density cell (64 tile "
               "units at zoom 14, ~38 m) and unit grid; kept by triggers on buildings; feeds "
               "building vector tiles at zoom <= 14'")
    op.execute(f"INSERT INTO building_density (cx, cy, grid_id, n) {_cells('buildings')}")

    op.execute(f"""
        CREATE FUNCTION building_density_add() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        BEGIN
            INSERT INTO building_density AS d (cx, cy, grid_id, n) {_cells('new_rows')}
            ON CONFLICT ON CONSTRAINT uq_building_density DO UPDATE SET n = d.n + excluded.n;
            RETURN NULL;
        END $$
    """)
    op.execute(f"""
        CREATE FUNCTION building_density_remove() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        BEGIN
            WITH gone AS ({_cells('old_rows')}),
            upd AS (
                UPDATE building_density d SET n = d.n - gone.n FROM gone
                WHERE d.cx = gone.cx AND d.cy = gone.cy
                  AND d.grid_id IS NOT DISTINCT FROM gone.grid_id AND d.n > gone.n
                RETURNING d.cx)
            DELETE FROM building_density d USING gone
            WHERE d.cx = gone.cx AND d.cy = gone.cy
              AND d.grid_id IS NOT DISTINCT FROM gone.grid_id AND d.n <= gone.n;
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO building_density AS d (cx, cy, grid_id, n) {_cells('new_rows')}
                ON CONFLICT ON CONSTRAINT uq_building_density DO UPDATE SET n = d.n + excluded.n;
            END IF;
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE FUNCTION building_density_clear() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        BEGIN
            TRUNCATE building_density;
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER buildings_density_insert AFTER INSERT ON buildings "
               "REFERENCING NEW TABLE AS new_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION building_density_add()")
    op.execute("CREATE TRIGGER buildings_density_update AFTER UPDATE ON buildings "
               "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION building_density_remove()")
    op.execute("CREATE TRIGGER buildings_density_delete AFTER DELETE ON buildings "
               "REFERENCING OLD TABLE AS old_rows "
               "FOR EACH STATEMENT EXECUTE FUNCTION building_density_remove()")
    op.execute("CREATE TRIGGER buildings_density_truncate AFTER TRUNCATE ON buildings "
               "FOR EACH STATEMENT EXECUTE FUNCTION building_density_clear()")

    rule = "gis_scope() = '' OR grid_id IN (SELECT id FROM grids WHERE in_scope(code))"
    op.execute("ALTER TABLE building_density ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY scope ON building_density TO gis_app USING ({rule}) "
               f"WITH CHECK ({rule})")
    # Read only for the application: the triggers (as the owner) write it.
    op.execute("REVOKE ALL ON building_density FROM gis_app")
    op.execute("GRANT SELECT ON building_density TO gis_app")


def downgrade() -> None:
    for name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS buildings_density_{name} ON buildings")
    for fn in ("add", "remove", "clear"):
        op.execute(f"DROP FUNCTION IF EXISTS building_density_{fn}()")
    op.execute("DROP TABLE IF EXISTS building_density")
    op.execute("DROP INDEX IF EXISTS idx_buildings_geom_3857")
    op.execute("ALTER TABLE buildings DROP COLUMN IF EXISTS geom_3857")

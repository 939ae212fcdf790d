"""Analytics schema and OGC support (issue 8)

The ``analytics`` schema holds documented, de-identified views for analysts who query PostGIS
directly (``geopandas.read_postgis``). No view exposes a personal field (names, ID numbers,
phones, exact addresses, free-text descriptions, reporters). The NOLOGIN role ``gis_analyst``
may read this schema and nothing else; ``gis-server`` creates login roles that are members of
it (``gis_server.core.analytics.create_analyst_login``).

The views run with their owner's rights, so row-level security does not narrow them: an
analyst database login sees the whole city, de-identified (as the ``analyst`` API role does).

Revision ID: 0006
Revises: 0005
"""
from alembic import op  # noqa: F401

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# name → (SQL, view comment, {column: comment})
VIEWS: dict[str, tuple[str, str, dict[str, str]]] = {}

VIEWS["grids"] = ("""
    WITH unit_counts AS (
        SELECT u.code,
               (SELECT count(*) FROM buildings b WHERE b.grid_id = u.id) AS buildings,
               (SELECT count(*) FROM households h WHERE h.grid_id = u.id) AS households,
               (SELECT coalesce(sum(h.size), 0) FROM households h WHERE h.grid_id = u.id)
                   AS residents,
               (SELECT count(*) FROM facilities f WHERE f.grid_id = u.id) AS facilities
        FROM grids u WHERE u.level = 'unit' AND u.valid_to IS NULL
    ),
    prefix_counts AS (
        SELECT left(code, n) AS prefix, sum(buildings)::bigint AS buildings,
               sum(households)::bigint AS households, sum(residents)::bigint AS residents,
               sum(facilities)::bigint AS facilities
        FROM unit_counts, unnest(ARRAY[6, 9, 12, 14, 15]) AS n
        WHERE n <= length(code)
        GROUP BY 1
    )
    SELECT g.id, g.code, g.name, g.level, p.code AS parent_code,
           g.area_m2, g.target_households, g.generation_id, g.valid_from, g.valid_to,
           g.valid_to IS NULL AS is_current,
           CASE WHEN g.valid_to IS NULL THEN coalesce(pc.buildings, 0) END AS building_count,
           CASE WHEN g.valid_to IS NULL THEN coalesce(pc.households, 0) END AS household_count,
           CASE WHEN g.valid_to IS NULL THEN coalesce(pc.residents, 0) END AS resident_count,
           CASE WHEN g.valid_to IS NULL THEN coalesce(pc.facilities, 0) END AS facility_count,
           (SELECT count(*) FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
             WHERE wg.grid_code = g.code AND w.active) AS worker_count,
           g.geom
    FROM grids g
    LEFT JOIN grids p ON p.id = g.parent_id
    LEFT JOIN prefix_counts pc
           ON g.valid_to IS NULL
          AND pc.prefix = left(g.code, CASE g.level WHEN 'district' THEN 6 WHEN 'street' THEN 9
                                       WHEN 'community' THEN 12 ELSE length(g.code) END)
""", "Grids of every level (district, street, community, unit), current and historical, with "
     "counts of buildings, households, residents, facilities and active workers for current "
     "grids. Filter with level = '...' and is_current. Geometry: MultiPolygon, EPSG:4326.", {
    "id": "Row id (a code has one row per validity period).",
    "code": "14-digit grid code (county 6 + street 3 + community 3 + unit 2); a prefix "
            "selects a subtree.",
    "name": "Grid name.",
    "level": "district, street, community or unit.",
    "parent_code": "Code of the parent grid (NULL for a district).",
    "area_m2": "Area in square metres (measured in the city's projected CRS).",
    "target_households": "Planned number of households for a unit grid (workload target).",
    "generation_id": "Grid generation (redraw) the row belongs to.",
    "valid_from": "Start of validity.",
    "valid_to": "End of validity; NULL for the current generation.",
    "is_current": "True for the grids in force now.",
    "building_count": "Buildings in the grid's subtree (current grids only, else NULL).",
    "household_count": "Households in the subtree (current grids only, else NULL).",
    "resident_count": "Residents (sum of household sizes) in the subtree (current only).",
    "facility_count": "Facilities and key places in the subtree (current only).",
    "worker_count": "Active workers assigned to exactly this grid code.",
    "geom": "Boundary, MultiPolygon in EPSG:4326.",
})

VIEWS["buildings"] = ("""
    SELECT b.id, u.code AS grid_code, left(u.code, 12) || '00' AS community_code,
           b.name, b.floors, b.use,
           (SELECT count(*) FROM households h WHERE h.building_id = b.id) AS household_count,
           (SELECT coalesce(sum(h.size), 0) FROM households h WHERE h.building_id = b.id)
               AS resident_count,
           b.anchor, b.geom
    FROM buildings b LEFT JOIN grids u ON u.id = b.grid_id
""", "Buildings with their unit grid and household/resident counts. No address. "
     "Geometry: MultiPolygon footprint (geom) and an interior point (anchor), EPSG:4326.", {
    "id": "Building id (same as /api/v1/buildings and the OGC collection).",
    "grid_code": "Code of the unit grid containing the building's anchor point.",
    "community_code": "Code of the community grid (unit code with the last 2 digits 00).",
    "name": "Building name or number (not a person).",
    "floors": "Number of floors.",
    "use": "Use (residential, commercial, ...).",
    "household_count": "Number of households registered in the building.",
    "resident_count": "Number of residents (sum of household sizes).",
    "anchor": "Point inside the footprint used for grid assignment, EPSG:4326.",
    "geom": "Footprint, MultiPolygon in EPSG:4326.",
})

VIEWS["facilities"] = ("""
    SELECT f.id, f.kind, f.name, f.is_key_place, u.code AS grid_code,
           left(u.code, 12) || '00' AS community_code, f.geom
    FROM facilities f LEFT JOIN grids u ON u.id = f.grid_id
""", "Facilities (hydrants, schools, clinics, ...) and key places. Geometry: Point, EPSG:4326.", {
    "id": "Facility id.",
    "kind": "Kind of facility.",
    "name": "Name of the place (an organisation, not a person).",
    "is_key_place": "True for a key place (重点场所).",
    "grid_code": "Code of the unit grid containing it.",
    "community_code": "Code of its community grid.",
    "geom": "Location, Point in EPSG:4326.",
})

VIEWS["households_by_grid"] = ("""
    SELECT u.code AS grid_code, left(u.code, 12) || '00' AS community_code,
           count(h.id) AS households,
           coalesce(sum(h.size), 0) AS residents,
           count(h.id) FILTER (WHERE h.is_rental) AS rental_households,
           round(avg(h.size)::numeric, 2) AS mean_household_size,
           (SELECT count(*) FROM persons p JOIN households h2 ON h2.id = p.household_id
             WHERE h2.grid_id = u.id AND p.category = 'registered') AS registered_persons,
           (SELECT count(*) FROM persons p JOIN households h2 ON h2.id = p.household_id
             WHERE h2.grid_id = u.id AND p.category = 'floating') AS floating_persons,
           (SELECT count(*) FROM persons p JOIN households h2 ON h2.id = p.household_id
             WHERE h2.grid_id = u.id AND p.special_group IS NOT NULL) AS special_group_persons,
           u.geom
    FROM grids u LEFT JOIN households h ON h.grid_id = u.id
    WHERE u.level = 'unit' AND u.valid_to IS NULL
    GROUP BY u.id
""", "Households and population aggregated per current unit grid: counts only, no household "
     "or person is identifiable. Geometry: the unit grid (MultiPolygon, EPSG:4326).", {
    "grid_code": "Unit grid code.",
    "community_code": "Community grid code.",
    "households": "Households in the grid.",
    "residents": "Residents (sum of household sizes).",
    "rental_households": "Households in rented housing.",
    "mean_household_size": "Mean household size.",
    "registered_persons": "Registered (户籍) persons on record.",
    "floating_persons": "Floating (流动) persons on record.",
    "special_group_persons": "Persons in a special group (elderly living alone, ...).",
    "geom": "Unit grid boundary, MultiPolygon in EPSG:4326.",
})

# Only columns that exist since revision 0001 (issue 6 may add more in 0003).
VIEWS["incidents"] = ("""
    SELECT i.id, i.category, i.status, i.source,
           u.code AS grid_code, left(u.code, 12) || '00' AS community_code,
           left(u.code, 9) || '00000' AS street_code,
           d.code AS department_code, d.name AS department_name,
           i.reported_at, i.dispatched_at, i.due_at, i.closed_at,
           round((extract(epoch FROM (i.closed_at - coalesce(i.dispatched_at, i.reported_at)))
                  / 3600.0)::numeric, 2) AS handling_hours,
           CASE WHEN i.closed_at IS NULL OR i.due_at IS NULL THEN NULL
                ELSE i.closed_at <= i.due_at END AS closed_on_time,
           i.geom
    FROM incidents i
    LEFT JOIN grids u ON u.id = i.grid_id
    LEFT JOIN departments d ON d.id = i.department_id
""", "Incidents (cases) without reporter, address or description. handling_hours runs from "
     "dispatch (or report) to closure. Geometry: Point, EPSG:4326.", {
    "id": "Incident id.",
    "category": "Category code (CJ/T 214 style).",
    "status": "Workflow state (reported, dispatched, ..., closed).",
    "source": "Intake channel: patrol, public, video or referral.",
    "grid_code": "Responsible unit grid code.",
    "community_code": "Its community grid code.",
    "street_code": "Its street code prefix (9 digits padded with zeros to 14).",
    "department_code": "Responsible department code.",
    "department_name": "Responsible department name.",
    "reported_at": "When it was reported.",
    "dispatched_at": "When it was dispatched (the handling clock starts).",
    "due_at": "Deadline.",
    "closed_at": "When it was closed (NULL while open).",
    "handling_hours": "Hours from dispatch (or report) to closure; NULL while open.",
    "closed_on_time": "True if closed by the deadline; NULL while open or without a deadline.",
    "geom": "Location, Point in EPSG:4326.",
})

VIEWS["worker_positions_latest"] = ("""
    SELECT lp.worker_id, w.role AS worker_role, d.code AS department_code, w.active,
           lp.recorded_at, lp.speed, lp.accuracy, lp.battery,
           here.code AS grid_code,
           ARRAY(SELECT wg.grid_code FROM worker_grids wg WHERE wg.worker_id = w.id
                 ORDER BY wg.grid_code) AS assigned_grid_codes,
           CASE WHEN here.code IS NULL THEN NULL
                ELSE NOT EXISTS (
                    SELECT 1 FROM worker_grids wg
                    JOIN grids ag ON ag.code = wg.grid_code AND ag.valid_to IS NULL
                    WHERE wg.worker_id = w.id
                      AND starts_with(here.code,
                                      left(ag.code, grid_prefix_length(ag.level, ag.code))))
           END AS outside_assigned_grids,
           lp.geom
    FROM latest_positions lp
    JOIN workers w ON w.id = lp.worker_id
    LEFT JOIN departments d ON d.id = w.department_id
    LEFT JOIN grids here ON here.id = lp.grid_id
""", "The latest known position of each worker: no name, phone or device id (worker_id is a "
     "pseudonymous key). Geometry: Point, EPSG:4326.", {
    "worker_id": "Worker id (pseudonymous; join with positions).",
    "worker_role": "grid_admin, coordinator, police, firefighter, supervisor, volunteer, leader.",
    "department_code": "Department of the worker, if any.",
    "active": "Whether the worker is active.",
    "recorded_at": "Device timestamp of the position.",
    "speed": "Speed as reported by the device (m/s).",
    "accuracy": "Reported horizontal accuracy (m).",
    "battery": "Battery level (0-1 or percent, as reported).",
    "grid_code": "Unit grid the position falls in.",
    "assigned_grid_codes": "Grid codes the worker is assigned to.",
    "outside_assigned_grids": "True when the position is outside every assigned grid "
                              "(an assignment to a community covers its unit grids).",
    "geom": "Position, Point in EPSG:4326.",
})

VIEWS["positions"] = ("""
    SELECT p.worker_id, w.role AS worker_role, p.recorded_at, p.speed, p.accuracy,
           u.code AS grid_code, p.geom
    FROM positions p
    JOIN workers w ON w.id = p.worker_id
    LEFT JOIN grids u ON u.id = p.grid_id
""", "Position history (partitioned by day underneath: filter on recorded_at). No name, phone "
     "or device id. Geometry: Point, EPSG:4326.", {
    "worker_id": "Worker id (pseudonymous).",
    "worker_role": "The worker's role.",
    "recorded_at": "Device timestamp.",
    "speed": "Reported speed (m/s).",
    "accuracy": "Reported accuracy (m).",
    "grid_code": "Unit grid the position falls in.",
    "geom": "Position, Point in EPSG:4326.",
})


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS analytics")
    op.execute("COMMENT ON SCHEMA analytics IS " + _quote(
        "De-identified views for analysts (issue 8): no names, ID numbers, phones, exact "
        "addresses or free text. Documented in docs/ANALYTICS.md."))
    for name, (sql, comment, columns) in VIEWS.items():
        op.execute(f"CREATE VIEW analytics.{name} AS {sql}")
        op.execute(f"COMMENT ON VIEW analytics.{name} IS {_quote(comment)}")
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN analytics.{name}.{column} IS {_quote(text)}")
    op.execute("""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gis_analyst') THEN
                CREATE ROLE gis_analyst NOLOGIN;
            END IF;
        END $$
    """)
    op.execute("GRANT USAGE ON SCHEMA analytics TO gis_analyst")
    op.execute("GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO gis_analyst")
    # The role is cluster-wide: make sure it reads nothing of the base tables in this database.
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM gis_analyst")


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS analytics CASCADE")
    # gis_analyst is cluster-wide (other databases may use it): it is left in place.

"""Write a whole city into PostGIS with COPY, then derive everything spatial in SQL.

Both city sources (``loaders.synthetic`` and ``loaders.osm``) build a :class:`CityData` of
plain (Geo)DataFrames; :func:`write_city` is the only place that knows the table layout.
Rows go in through ``COPY ... FROM STDIN`` (CSV, geometries as EWKB hex) because ORM inserts
would take hours for the ``large`` city; then PostGIS does the set work:

* grid areas in metres (``ST_Area`` in the city's projected CRS),
* ``grid_parts`` = current grids cut with ``ST_Subdivide`` (fast point-in-polygon),
* the unit grid of every building (its interior point), household and facility.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Connection
from tqdm import tqdm

GRID_COLUMNS = ["code", "name", "level", "parent_code", "geometry"]
BUILDING_COLUMNS = ["id", "name", "address", "floors", "use", "osm_id", "geometry"]
HOUSEHOLD_COLUMNS = ["id", "building_id", "unit", "room", "head_name", "size", "is_rental"]
PERSON_COLUMNS = ["household_id", "name", "id_number", "phone", "gender", "birth_date",
                  "category", "relation", "special_group"]
FACILITY_COLUMNS = ["kind", "name", "address", "is_key_place", "osm_id", "geometry"]
DEPARTMENT_COLUMNS = ["code", "name", "grid_code", "phone"]
WORKER_COLUMNS = ["id", "name", "role", "phone", "device_id", "department_code"]
WORKER_GRID_COLUMNS = ["worker_id", "grid_code", "is_responsible"]


@dataclass
class CityData:
    """Everything a loader produces; geometries in EPSG:4326.

    ``grids`` must list parents before children (district, street, community, unit).
    ``buildings.id``, ``households.id`` and ``workers.id`` are the ids stored in the database
    (1..n), so that households/persons/assignments can refer to them before loading.
    """
    name: str
    county_code: str
    metric_srid: int
    source: str
    grids: gpd.GeoDataFrame
    buildings: gpd.GeoDataFrame
    households: pd.DataFrame
    persons: pd.DataFrame
    facilities: gpd.GeoDataFrame
    departments: pd.DataFrame
    workers: pd.DataFrame
    worker_grids: pd.DataFrame
    extra: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "grids": len(self.grids), "buildings": len(self.buildings),
            "households": len(self.households), "persons": len(self.persons),
            "facilities": len(self.facilities), "departments": len(self.departments),
            "workers": len(self.workers), "worker_grids": len(self.worker_grids),
        }


def _ewkb_hex(geoms) -> np.ndarray:
    arr = shapely.set_srid(np.asarray(geoms, dtype=object), 4326)
    return shapely.to_wkb(arr, hex=True, include_srid=True)


def _copy_frame(conn: Connection, table: str, frame: pd.DataFrame, chunk_rows: int = 200_000,
                progress: tqdm | None = None) -> None:
    """COPY a DataFrame into ``table`` (columns named as in the table) in CSV chunks."""
    if frame.empty:
        return
    cols = ", ".join(frame.columns)
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as cp:
            for start in range(0, len(frame), chunk_rows):
                part = frame.iloc[start:start + chunk_rows]
                buf = io.StringIO()
                part.to_csv(buf, header=False, index=False, na_rep="\\N")
                cp.write(buf.getvalue())
                if progress is not None:
                    progress.update(len(part))


def _multi(geoms) -> np.ndarray:
    """Polygons → MultiPolygons (the column type), leaving MultiPolygons alone."""
    arr = np.asarray(geoms, dtype=object)
    out = arr.copy()
    single = shapely.get_type_id(arr) == 3
    if single.any():
        out[single] = shapely.multipolygons(arr[single], indices=np.arange(single.sum()))
    return out


def clear_city(conn: Connection) -> None:
    """Remove every city row (keeps the schema, and keeps user accounts and the audit log).

    TRUNCATE ... CASCADE would follow users.worker_id → workers and wipe the accounts, so the
    small tables that accounts reach (workers, departments, grids) are DELETEd instead.
    """
    conn.execute(text(
        "TRUNCATE incidents, incident_events, positions, latest_positions, worker_grids, "
        "grid_parts, persons, households, buildings, facilities RESTART IDENTITY CASCADE"))
    conn.execute(text("UPDATE users SET worker_id = NULL WHERE worker_id IS NOT NULL"))
    for table in ("workers", "departments", "grids", "grid_generations", "city"):
        conn.execute(text(f"DELETE FROM {table}"))


def write_city(conn: Connection, city: CityData, show_progress: bool = True) -> dict[str, int]:
    """Load ``city`` into an empty schema in one transaction; return row counts."""
    total = sum(city.counts().values())
    bar = tqdm(total=total, unit="rows", desc=f"loading {city.name}", disable=not show_progress)
    conn.execute(text(
        "INSERT INTO city (id, name, county_code, metric_srid, source) "
        "VALUES (1, :name, :county, :srid, :source)"),
        {"name": city.name, "county": city.county_code, "srid": city.metric_srid,
         "source": city.source})
    generation_id = conn.execute(text(
        "INSERT INTO grid_generations (description) VALUES (:d) RETURNING id"),
        {"d": f"initial load: {city.source}"}).scalar_one()

    grids = city.grids.reset_index(drop=True)
    grids = grids.assign(id=np.arange(1, len(grids) + 1))
    id_by_code = dict(zip(grids["code"], grids["id"]))
    parent_ids = grids["parent_code"].map(id_by_code)
    missing = grids["parent_code"].notna() & parent_ids.isna()
    if missing.any():
        raise ValueError(f"grids with unknown parent_code: {list(grids.code[missing][:5])}")
    grid_rows = pd.DataFrame({
        "id": grids["id"], "code": grids["code"], "name": grids["name"],
        "level": grids["level"], "parent_id": parent_ids.astype("Int64"),
        "geom": _ewkb_hex(_multi(grids.geometry.values)), "area_m2": 0.0,
        "target_households": grids.get("target_households", pd.Series(dtype="Int64")),
        "generation_id": generation_id,
    })
    _copy_frame(conn, "grids", grid_rows, progress=bar)
    conn.execute(text(
        "UPDATE grids SET area_m2 = ST_Area(ST_Transform(geom, :srid))"), {"srid": city.metric_srid})
    rebuild_grid_parts(conn)

    b = city.buildings
    building_rows = pd.DataFrame({
        "id": b["id"].astype("int64"), "name": b["name"], "address": b["address"],
        "floors": b["floors"].astype("Int64"), "use": b["use"],
        "osm_id": b["osm_id"].astype("Int64"),
        "geom": _ewkb_hex(_multi(b.geometry.values)),
        "anchor": _ewkb_hex(shapely.point_on_surface(b.geometry.values)),
    })
    _copy_frame(conn, "buildings", building_rows, progress=bar)

    _copy_frame(conn, "households", city.households[HOUSEHOLD_COLUMNS], progress=bar)
    _copy_frame(conn, "persons", city.persons[PERSON_COLUMNS], progress=bar)

    f = city.facilities
    facility_rows = pd.DataFrame({
        "kind": f["kind"], "name": f["name"], "address": f["address"],
        "is_key_place": f["is_key_place"].astype(bool), "osm_id": f["osm_id"].astype("Int64"),
        "geom": _ewkb_hex(f.geometry.values),
    })
    _copy_frame(conn, "facilities", facility_rows, progress=bar)

    d = city.departments
    department_rows = pd.DataFrame({
        "code": d["code"], "name": d["name"], "grid_id": d["grid_code"].map(id_by_code)
        .astype("Int64"), "phone": d["phone"]})
    _copy_frame(conn, "departments", department_rows, progress=bar)
    dept_ids = dict(conn.execute(text("SELECT code, id FROM departments")).all())

    w = city.workers
    worker_rows = pd.DataFrame({
        "id": w["id"].astype("int64"), "name": w["name"], "role": w["role"],
        "phone": w["phone"], "device_id": w["device_id"],
        "department_id": w["department_code"].map(dept_ids).astype("Int64")})
    _copy_frame(conn, "workers", worker_rows, progress=bar)
    _copy_frame(conn, "worker_grids", city.worker_grids[WORKER_GRID_COLUMNS], progress=bar)

    for table in ("grids", "buildings", "households", "persons", "facilities", "departments",
                  "workers"):
        conn.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"))
    derive_grid_assignments(conn)
    bar.close()
    for table in ("grids", "grid_parts", "buildings", "households", "persons", "facilities"):
        conn.execute(text(f"ANALYZE {table}"))
    return city.counts()


def rebuild_grid_parts(conn: Connection, max_vertices: int = 64) -> None:
    """Re-cut current grids into small pieces for point-in-polygon in SQL (mapit-style)."""
    conn.execute(text("TRUNCATE grid_parts RESTART IDENTITY"))
    conn.execute(text(
        "INSERT INTO grid_parts (grid_id, level, geom) "
        "SELECT id, level, ST_Subdivide(geom, :n) FROM grids WHERE valid_to IS NULL"),
        {"n": max_vertices})


def _assign_unit_grid(conn: Connection, table: str, point_column: str) -> None:
    """``table.grid_id`` = the current unit grid containing ``point_column`` (smallest code
    wins on a shared edge); rows outside every grid get NULL."""
    conn.execute(text(f"""
        UPDATE {table} t SET grid_id = hit.grid_id
        FROM (
            SELECT DISTINCT ON (x.id) x.id AS row_id, g.id AS grid_id
            FROM {table} x
            JOIN grid_parts p ON p.level = 'unit' AND ST_Intersects(p.geom, x.{point_column})
            JOIN grids g ON g.id = p.grid_id
            ORDER BY x.id, g.code
        ) hit
        WHERE t.id = hit.row_id
    """))


def derive_grid_assignments(conn: Connection) -> None:
    """Store the unit grid of every building, household and facility (point-in-polygon).

    A point on a shared edge belongs to several grids; the one with the smallest code wins,
    the same rule ``core.locate`` applies, so SQL and Python agree.
    """
    _assign_unit_grid(conn, "buildings", "anchor")
    conn.execute(text("""
        UPDATE households h SET grid_id = b.grid_id
        FROM buildings b WHERE b.id = h.building_id
    """))
    _assign_unit_grid(conn, "facilities", "geom")

"""Grid hierarchy queries: lists and single grids as GeoJSON, with workload statistics."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from ..errors import not_found
from ..layers import get as get_layer
from .features import feature_collection, single_feature

# Codes are hierarchical (BRIEF: county 6 + street 3 + community 3 + unit 2): the prefix of
# this many digits is shared by a grid and all its descendants.
PREFIX_DIGITS = {"district": 6, "street": 9, "community": 12, "unit": 14}
PREFIX_SQL = ("CASE {g}.level WHEN 'district' THEN 6 WHEN 'street' THEN 9 "
              "WHEN 'community' THEN 12 ELSE length({g}.code) END")

# Building and household counts per code prefix, so any level's totals are one hash join.
_STATS_CTE = """
    unit_counts AS (
        SELECT u.code,
               (SELECT count(*) FROM buildings b WHERE b.grid_id = u.id) AS buildings,
               (SELECT count(*) FROM households h WHERE h.grid_id = u.id) AS households
        FROM grids u WHERE u.level = 'unit' AND u.valid_to IS NULL
    ),
    prefix_counts AS (
        SELECT left(code, n) AS prefix, sum(buildings) AS buildings,
               sum(households) AS households
        FROM unit_counts, unnest(ARRAY[6, 9, 12, 14, 15]) AS n
        WHERE n <= length(code)
        GROUP BY 1
    )"""


def _select(where: list[str], with_stats: bool) -> str:
    layer = get_layer("grids")
    stats_cols = stats_join = ""
    cte = ""
    if with_stats:
        cte = "WITH " + _STATS_CTE
        stats_cols = """,
            coalesce(pc.buildings, 0) AS building_count,
            coalesce(pc.households, 0) AS household_count,
            (SELECT coalesce(json_agg(json_build_object('name', w.name, 'role', w.role,
                                                        'phone', w.phone)
                                      ORDER BY wg.is_responsible DESC, w.role, w.id), '[]')
               FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
              WHERE wg.grid_code = g.code AND w.active) AS workers"""
        stats_join = (f"LEFT JOIN prefix_counts pc "
                      f"ON pc.prefix = left(g.code, {PREFIX_SQL.format(g='g')})")
    return f"""
        {cte}
        SELECT {layer.select_list()}, g.geom{stats_cols}
        FROM grids g LEFT JOIN grids p ON p.id = g.parent_id
        {stats_join}
        WHERE {' AND '.join(where)}
        ORDER BY g.code
    """


def _validity(at: datetime | None, params: dict) -> str:
    if at is None:
        return "g.valid_to IS NULL"
    params["at"] = at
    return "g.valid_from <= :at AND (g.valid_to IS NULL OR g.valid_to > :at)"


def list_grids(conn: Connection, level: str | None = None, parent: str | None = None,
               at: datetime | None = None, with_stats: bool = False) -> dict:
    """GeoJSON FeatureCollection of grids (current, or valid at ``at``)."""
    params: dict = {}
    where = [_validity(at, params)]
    if level:
        where.append("g.level = :level")
        params["level"] = level
    if parent:
        where.append("p.code = :parent")
        params["parent"] = parent
    return feature_collection(conn, _select(where, with_stats), params, id_column="code")


def get_grid(conn: Connection, code: str, at: datetime | None = None) -> dict:
    params: dict = {"code": code}
    where = [_validity(at, params), "g.code = :code"]
    feature = single_feature(conn, _select(where, with_stats=True), params, id_column="code")
    if feature is None:
        raise not_found("grid", code)
    return feature


def without_worker_contacts(fc: dict) -> dict:
    """Drop workers' names and phones (for roles that see no personal data): roles stay."""
    for feature in fc.get("features", [fc] if fc.get("type") == "Feature" else []):
        workers = feature["properties"].get("workers")
        if workers is not None:
            feature["properties"]["workers"] = [{"role": w["role"]} for w in workers]
    return fc

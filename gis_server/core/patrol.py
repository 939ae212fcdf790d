"""Patrol coverage: how much of each grid its workers actually walked on a given day.

For every current unit grid: the share of its area within ``distance_m`` of the day's tracks
of the workers assigned to it (``worker_grids``), and the share of its buildings within that
distance. All in PostGIS, in the city's metric CRS (``city.metric_srid``):

* a worker's fixes of the day, ordered by time, become lines (``ST_MakeLine``); a gap longer
  than ``gap_s`` (device off, no signal) starts a new line instead of drawing a straight line
  across streets nobody walked;
* each worker's lines are buffered by ``distance_m`` once (``ST_Buffer``), the buffers of a
  grid's workers are merged and intersected with the grid;
* higher levels (community, street, district) sum their unit grids' areas and buildings.

Grids with no covered area are listed as ``unwalked``.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .grids import PREFIX_DIGITS

UNIT_SQL = """
WITH fixes AS (
    SELECT p.worker_id, p.recorded_at, p.geom,
           CASE WHEN p.recorded_at - lag(p.recorded_at) OVER w > make_interval(secs => :gap)
                THEN 1 ELSE 0 END AS breaks
    FROM positions p
    WHERE p.recorded_at >= CAST(:day AS date)::timestamptz
      AND p.recorded_at < (CAST(:day AS date) + 1)::timestamptz
    WINDOW w AS (PARTITION BY p.worker_id ORDER BY p.recorded_at)
), numbered AS (
    SELECT worker_id, recorded_at, geom,
           sum(breaks) OVER (PARTITION BY worker_id ORDER BY recorded_at) AS seg
    FROM fixes
), lines AS (
    SELECT worker_id,
           ST_Transform(CASE WHEN count(*) > 1 THEN ST_MakeLine(geom ORDER BY recorded_at)
                             ELSE ST_Collect(geom) END, :srid) AS line
    FROM numbered GROUP BY worker_id, seg
), buffers AS MATERIALIZED (
    SELECT worker_id,
           ST_Union(ST_Buffer(ST_Simplify(line, 0.5), :d, 'quad_segs=4')) AS buf
    FROM lines GROUP BY worker_id
), units AS MATERIALIZED (
    SELECT g.id, g.code, g.name, ST_Transform(g.geom, :srid) AS gm
    FROM grids g
    WHERE g.level = 'unit' AND g.valid_to IS NULL
      AND left(g.code, length(:prefix)) = :prefix
), cover AS MATERIALIZED (
    SELECT u.id, count(*) AS walkers, ST_Union(b.buf) AS buf
    FROM units u
    JOIN worker_grids wg ON wg.grid_code = u.code
    JOIN buffers b ON b.worker_id = wg.worker_id
    GROUP BY u.id
), measured AS (
    SELECT u.id, u.code, u.name, ST_Area(u.gm) AS area_m2,
           coalesce(c.walkers, 0) AS workers_walked,
           CASE WHEN c.buf IS NULL OR NOT ST_Intersects(c.buf, u.gm) THEN 0.0
                ELSE ST_Area(ST_Intersection(u.gm, c.buf)) END AS covered_m2,
           CASE WHEN c.buf IS NULL THEN NULL ELSE ST_Transform(c.buf, 4326) END AS buf4326
    FROM units u LEFT JOIN cover c ON c.id = u.id
)
SELECT m.code, m.name, m.area_m2, m.covered_m2, m.workers_walked,
       (SELECT count(*) FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
         WHERE wg.grid_code = m.code AND w.active) AS workers_assigned,
       (SELECT count(*) FROM buildings b WHERE b.grid_id = m.id) AS buildings,
       CASE WHEN m.buf4326 IS NULL THEN 0 ELSE
           (SELECT count(*) FROM buildings b
             WHERE b.grid_id = m.id AND ST_Intersects(b.geom, m.buf4326)) END
           AS buildings_covered
FROM measured m
ORDER BY m.code
"""


def metric_srid(conn: Connection, override: int | None = None) -> int:
    if override:
        return int(override)
    srid = conn.execute(text("SELECT metric_srid FROM city WHERE id = 1")).scalar()
    return int(srid or 3857)


def coverage(conn: Connection, day: date, level: str = "unit", distance_m: float = 30.0,
             gap_s: float = 300.0, scope_prefix: str = "", srid: int | None = None) -> dict:
    """Coverage per grid of ``level`` for ``day`` (the database's calendar day)."""
    rows = conn.execute(text(UNIT_SQL), {
        "day": day, "gap": gap_s, "d": distance_m, "srid": metric_srid(conn, srid),
        "prefix": scope_prefix}).mappings().all()
    units = [dict(r) for r in rows]
    if level == "unit":
        grids = [_shape(u["code"], u["name"], u["area_m2"], u["covered_m2"],
                        u["buildings"], u["buildings_covered"], u["workers_assigned"],
                        u["workers_walked"]) for u in units]
    else:
        n = PREFIX_DIGITS[level]
        names = dict(conn.execute(text(
            "SELECT code, name FROM grids WHERE level = :l AND valid_to IS NULL"),
            {"l": level}).all())
        agg: dict[str, list] = {}
        for u in units:
            key = u["code"][:n].ljust(len(u["code"]), "0")
            a = agg.setdefault(key, [0.0, 0.0, 0, 0, 0, 0])
            a[0] += u["area_m2"]
            a[1] += u["covered_m2"]
            a[2] += u["buildings"]
            a[3] += u["buildings_covered"]
            a[4] += u["workers_assigned"]
            a[5] += u["workers_walked"]
        grids = []
        for code in sorted(agg):
            a = agg[code]
            grids.append(_shape(code, names.get(code), a[0], a[1], a[2], a[3], a[4], a[5]))
    return {
        "date": day.isoformat(), "level": level, "distance_m": distance_m, "gap_s": gap_s,
        "grids": grids,
        "unwalked": [g["code"] for g in grids if g["covered_m2"] == 0],
        "summary": {
            "grids": len(grids),
            "walked": sum(1 for g in grids if g["covered_m2"] > 0),
            "area_share": _share(sum(g["covered_m2"] for g in grids),
                                 sum(g["area_m2"] for g in grids)),
        },
    }


def _share(part, whole):
    return round(part / whole, 4) if whole else None


def _shape(code, name, area, covered, buildings, buildings_covered, assigned, walked):
    return {"code": code, "name": name, "area_m2": round(float(area), 1),
            "covered_m2": round(float(covered), 1), "area_share": _share(covered, area),
            "buildings": int(buildings), "buildings_covered": int(buildings_covered),
            "buildings_share": _share(buildings_covered, buildings),
            "workers_assigned": int(assigned), "workers_walked": int(walked)}

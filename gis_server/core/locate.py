"""Which grid is responsible for a point.

Two implementations that must agree (tests check they do):

* :class:`GridIndex` — the current unit grids in an in-process shapely ``STRtree`` with the
  ancestor chain and workers pre-joined. A lookup touches no database, which is what lets
  ``/api/v1/locate`` run at close to hello-world speed, and ``route_points`` routes ~0.5 M
  points/s in bulk. Each process rebuilds its index when ``grid_state.version`` changes (a
  trigger bumps it on any change to grids, workers or assignments); the version is checked
  at most every ``ttl`` seconds.
* :func:`locate_sql` — the same answer from PostGIS (``grid_parts``, subdivided), used for
  historical questions (``at=``: who was responsible on 1 March) where grids no longer current
  must be searched.

Boundary rule (both): a point inside several grids' closures (on a shared edge or vertex)
belongs to the grid with the smallest code and is flagged ``on_boundary`` with the others
listed as candidates for the command centre to confirm.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ..errors import APIError

LEVEL_CHAIN = ("unit", "community", "street", "district")


class NotCovered(APIError):
    def __init__(self, lon: float, lat: float):
        super().__init__(404, "not_covered",
                         f"no grid covers the point ({lon}, {lat})", lon=lon, lat=lat)


@dataclass
class GridIndex:
    version: int
    codes: np.ndarray  # unit grid codes, index-aligned with geoms
    ids: np.ndarray  # their ``grids.id`` (int64), index-aligned too
    geoms: np.ndarray  # shapely polygons (prepared)
    tree: shapely.STRtree
    answers: list[dict]  # per unit grid: the JSON-ready chain + workers

    @classmethod
    def build(cls, conn: Connection) -> GridIndex:
        version = conn.execute(text("SELECT version FROM grid_state WHERE id = 1")).scalar_one()
        rows = conn.execute(text("""
            SELECT u.id, u.code, u.name, ST_AsBinary(u.geom) AS wkb,
                   c.code AS c_code, c.name AS c_name,
                   s.code AS s_code, s.name AS s_name,
                   d.code AS d_code, d.name AS d_name
            FROM grids u
            LEFT JOIN grids c ON c.id = u.parent_id
            LEFT JOIN grids s ON s.id = c.parent_id
            LEFT JOIN grids d ON d.id = s.parent_id
            WHERE u.level = 'unit' AND u.valid_to IS NULL
            ORDER BY u.code
        """)).all()
        workers: dict[str, list[dict]] = {}
        for code, wid, name, role, phone, responsible in conn.execute(text("""
            SELECT wg.grid_code, w.id, w.name, w.role, w.phone, wg.is_responsible
            FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
            WHERE w.active
            ORDER BY wg.grid_code, wg.is_responsible DESC, w.role, w.id
        """)):
            workers.setdefault(code, []).append(
                {"id": wid, "name": name, "role": role, "phone": phone,
                 "responsible": responsible})
        geoms = shapely.from_wkb([r.wkb for r in rows]) if rows else np.empty(0, dtype=object)
        shapely.prepare(geoms)
        answers = []
        for r in rows:
            answers.append({
                "unit": {"code": r.code, "name": r.name},
                "community": _node(r.c_code, r.c_name),
                "street": _node(r.s_code, r.s_name),
                "district": _node(r.d_code, r.d_name),
                "workers": workers.get(r.code, []),
            })
        return cls(version=version, codes=np.array([r.code for r in rows], dtype=object),
                   ids=np.array([r.id for r in rows], dtype=np.int64), geoms=geoms,
                   tree=shapely.STRtree(geoms), answers=answers)

    def candidates(self, lon: float, lat: float) -> list[int]:
        """Indices of grids whose closure contains the point, owner first."""
        hits = self.tree.query(shapely.Point(lon, lat), predicate="intersects")
        if len(hits) > 1:
            hits = sorted(hits, key=lambda i: self.codes[i])
        return list(hits)

    def locate(self, lon: float, lat: float) -> dict:
        hits = self.candidates(lon, lat)
        if not hits:
            raise NotCovered(lon, lat)
        owner = hits[0]
        on_boundary = len(hits) > 1 or not self.geoms[owner].contains(shapely.Point(lon, lat))
        answer = dict(self.answers[owner])
        answer["point"] = {"lon": lon, "lat": lat}
        answer["on_boundary"] = on_boundary
        answer["candidates"] = [self.answers[i]["unit"] for i in hits[1:]]
        return answer

    def route_indices(self, lons, lats) -> np.ndarray:
        """Vectorised routing: the index (into ``codes``/``ids``) of the owning unit grid per
        point, -1 where uncovered."""
        points = shapely.points(np.asarray(lons, dtype=float), np.asarray(lats, dtype=float))
        point_idx, grid_idx = self.tree.query(points, predicate="intersects")
        out = np.full(len(points), -1, dtype=np.int64)
        if len(point_idx):
            # Several hits for one point (shared edge): the smallest code wins, as in locate().
            order = np.lexsort((self.codes[grid_idx], point_idx))
            point_idx, grid_idx = point_idx[order], grid_idx[order]
            first = np.ones(len(point_idx), dtype=bool)
            first[1:] = point_idx[1:] != point_idx[:-1]
            out[point_idx[first]] = grid_idx[first]
        return out

    def route_points(self, lons, lats) -> np.ndarray:
        """Vectorised routing: the owning unit grid code per point (None where uncovered)."""
        found = self.route_indices(lons, lats)
        out = np.full(len(found), None, dtype=object)
        covered = found >= 0
        out[covered] = self.codes[found[covered]]
        return out


def _node(code, name):
    return {"code": code, "name": name} if code else None


class GridIndexCache:
    """One index per engine per process, rebuilt when ``grid_state.version`` moves."""

    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._index: dict[int, GridIndex] = {}
        self._checked: dict[int, float] = {}

    def get(self, engine: Engine) -> GridIndex:
        key = id(engine)
        index = self._index.get(key)
        now = time.monotonic()
        if index is not None and now - self._checked.get(key, 0) < self.ttl:
            return index
        with self._lock:
            index = self._index.get(key)
            if index is not None and now - self._checked.get(key, 0) < self.ttl:
                return index
            with engine.connect() as conn:
                version = conn.execute(
                    text("SELECT version FROM grid_state WHERE id = 1")).scalar_one()
                if index is None or index.version != version:
                    index = GridIndex.build(conn)
                    self._index[key] = index
            self._checked[key] = time.monotonic()
            return index

    def invalidate(self) -> None:
        with self._lock:
            self._index.clear()
            self._checked.clear()


def locate_sql(conn: Connection, lon: float, lat: float, at: datetime | None = None) -> dict:
    """Locate in PostGIS; with ``at``, among the grids that were valid at that instant."""
    if at is None:
        hits = conn.execute(text("""
            SELECT g.id, g.code, g.name, ST_Contains(g.geom, pt) AS inside
            FROM (SELECT ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS pt) q
            JOIN grid_parts p ON p.level = 'unit' AND ST_Intersects(p.geom, q.pt)
            JOIN grids g ON g.id = p.grid_id
            GROUP BY g.id, g.code, g.name, g.geom, q.pt
            ORDER BY g.code
        """), {"lon": lon, "lat": lat}).all()
    else:
        hits = conn.execute(text("""
            SELECT g.id, g.code, g.name, ST_Contains(g.geom, pt) AS inside
            FROM (SELECT ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS pt) q
            JOIN grids g ON g.level = 'unit' AND ST_Intersects(g.geom, q.pt)
            WHERE g.valid_from <= :at AND (g.valid_to IS NULL OR g.valid_to > :at)
            ORDER BY g.code
        """), {"lon": lon, "lat": lat, "at": at}).all()
    if not hits:
        raise NotCovered(lon, lat)
    owner = hits[0]
    chain = conn.execute(text("""
        WITH RECURSIVE up AS (
            SELECT id, code, name, level, parent_id FROM grids WHERE id = :id
            UNION ALL
            SELECT g.id, g.code, g.name, g.level, g.parent_id
            FROM grids g JOIN up ON g.id = up.parent_id
        )
        SELECT level, code, name FROM up
    """), {"id": owner.id}).all()
    answer = {level: None for level in LEVEL_CHAIN}
    for level, code, name in chain:
        answer[level] = {"code": code, "name": name}
    answer["workers"] = [dict(r._mapping) for r in conn.execute(text("""
        SELECT w.id, w.name, w.role, w.phone, wg.is_responsible AS responsible
        FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
        WHERE wg.grid_code = :code AND w.active
        ORDER BY wg.is_responsible DESC, w.role, w.id
    """), {"code": owner.code})]
    answer["point"] = {"lon": lon, "lat": lat}
    answer["on_boundary"] = len(hits) > 1 or not owner.inside
    answer["candidates"] = [{"code": h.code, "name": h.name} for h in hits[1:]]
    if at is not None:
        answer["at"] = at.isoformat()
    return answer

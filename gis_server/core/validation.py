"""Coverage validation of grid layers (shapely 2.2; PostGIS 3.3 has no ST_Coverage*).

A level of grids must tile each parent: valid polygons, one part, no holes, no overlap between
siblings, no gap inside the parent, nothing outside it, no slivers and sizes near the target.
:func:`validate_groups` answers a list of *problems*; each has its ``type`` (one of
:data:`PROBLEM_TYPES`), the ``grids`` involved, its ``area_m2`` (or ``length_m``) measured in
the city's projected CRS, a ``geometry`` (GeoJSON, EPSG:4326) a map can draw, and a
``message``. Invalid polygons come with a ``proposal`` (``make_valid``).

Fast path: a sibling group that :func:`shapely.coverage_is_valid` accepts has no overlaps and
matching edges, so the pairwise overlap search is skipped; its union is
:func:`shapely.coverage_union_all`. A valid coverage can still have gaps, so parent minus
union is always computed.

:func:`repair` snaps and cleans a group (``coverage_clean`` within a tolerance, ``make_valid``,
clipping to the parent) and returns the repaired geometries with the problems that remain, for
a planner to preview before accepting.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np
import shapely
from pyproj import Transformer
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import bad_param

PROBLEM_TYPES = ("invalid", "overlap", "gap", "outside_parent", "multipart", "hole", "sliver",
                 "size")
GEOJSON_DECIMALS = 7
REPAIR_GRID_M = 0.01  # repair snaps vertices to a 1 cm grid (set_precision)


@dataclass
class Settings:
    """Tolerances (metres, m²); every one can be overridden per request / plan."""
    target_area_m2: float = 10_000.0  # the classic urban unit grid (万米单元网格)
    size_min_ratio: float = 0.25  # below target * ratio → "size"
    size_max_ratio: float = 4.0  # above target * ratio → "size"
    sliver_area_m2: float = 1_000.0  # a grid (or part) smaller than this is a sliver
    sliver_width_m: float = 10.0  # ... or thinner than this (mean width 2A/P)
    gap_tolerance_m2: float = 1.0  # gaps / overlaps / outside parts smaller than this are noise
    snap_m: float = 0.5  # repair: snapping distance
    repair_gap_width_m: float = 5.0  # repair: gaps narrower than this are closed

    @classmethod
    def from_mapping(cls, values: dict | None, level: str = "unit") -> Settings:
        s = cls()
        if level != "unit":  # size targets are for unit grids only
            s.size_min_ratio, s.size_max_ratio = 0.0, math.inf
        for f in fields(cls):
            if values and values.get(f.name) is not None:
                try:
                    x = float(values[f.name])
                except (TypeError, ValueError):
                    raise bad_param(f.name, f"{f.name} must be a number") from None
                if not math.isfinite(x) or x < 0:
                    raise bad_param(f.name, f"{f.name} must be a finite number >= 0")
                setattr(s, f.name, x)
        return s

    def to_dict(self) -> dict:
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


@lru_cache(maxsize=16)
def transformers(metric_srid: int) -> tuple[Transformer, Transformer]:
    return (Transformer.from_crs(4326, metric_srid, always_xy=True),
            Transformer.from_crs(metric_srid, 4326, always_xy=True))


def _apply(t: Transformer, geoms):
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def to_metric(geoms, srid: int):
    return _apply(transformers(srid)[0], geoms)


def to_wgs(geoms, srid: int):
    return _apply(transformers(srid)[1], geoms)


def metric_srid(conn: Connection) -> int:
    srid = conn.execute(text("SELECT metric_srid FROM city WHERE id = 1")).scalar()
    return int(srid) if srid else 3857


def geojson(geom, srid: int) -> dict | None:
    """GeoJSON dict (EPSG:4326) of a metric geometry."""
    if geom is None or shapely.is_empty(geom):
        return None
    g = shapely.set_precision(to_wgs(geom, srid), 10 ** -GEOJSON_DECIMALS)
    return shapely.geometry.mapping(g) if not shapely.is_empty(g) else None


def polygonal(geom):
    """Only the polygonal parts of a geometry (make_valid may add lines or points)."""
    if geom is None:
        return shapely.Polygon()
    parts = shapely.get_parts(geom)
    polys = [p for p in parts if shapely.get_type_id(p) in (3, 6)]
    polys = [q for p in polys for q in shapely.get_parts(p)]
    if not polys:
        return shapely.Polygon()
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def drop_dust(geom, min_area: float):
    """The polygonal parts of ``geom`` of at least ``min_area`` (noise parts dropped)."""
    parts = [p for p in shapely.get_parts(geom) if shapely.area(p) >= min_area]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _problem(kind: str, grids, geom, srid: int, message: str, measure: str = "area",
             **extra) -> dict:
    p = {"type": kind, "grids": sorted(set(grids))}
    if measure == "area":
        p["area_m2"] = round(float(shapely.area(geom)), 2)
    else:
        p["length_m"] = round(float(shapely.length(geom)), 2)
    p["geometry"] = geojson(geom, srid)
    p["message"] = message
    p.update(extra)
    return p


def _check_grid(code: str, geom, s: Settings, srid: int, out: list[dict]):
    """Per-grid checks; returns the geometry the coverage checks should use."""
    if geom is None or shapely.is_empty(geom):
        out.append({"type": "invalid", "grids": [code], "area_m2": 0.0, "geometry": None,
                    "message": "empty geometry"})
        return None
    if not shapely.is_valid(geom):
        fixed = polygonal(shapely.make_valid(geom))
        dust_free = drop_dust(fixed, s.gap_tolerance_m2)
        # Reprojection noise: a zero-width spike that was collinear in degrees is not in
        # metres. When make_valid changes neither the area nor the part count, it is not a
        # planning problem; the cleaned geometry is checked from here on.
        if (shapely.get_num_geometries(dust_free) == shapely.get_num_geometries(geom)
                and abs(shapely.area(dust_free) - shapely.area(geom)) < s.gap_tolerance_m2):
            return _check_grid(code, dust_free, s, srid, out)
        out.append(_problem("invalid", [code], fixed, srid,
                            f"invalid polygon: {shapely.is_valid_reason(geom)}; "
                            "make_valid proposed",
                            reason=shapely.is_valid_reason(geom),
                            proposal=geojson(fixed, srid)))
        geom = fixed
        if shapely.is_empty(geom):
            return None
    parts = shapely.get_parts(geom)
    if len(parts) > 1:
        areas = shapely.area(parts)
        minor = shapely.MultiPolygon(list(parts[np.argsort(areas)[::-1][1:]]))
        out.append(_problem("multipart", [code], minor, srid,
                            f"{len(parts)} parts: a grid must be one contiguous polygon "
                            "(geometry: the parts other than the largest)", parts=len(parts)))
    holes = [shapely.Polygon(r) for p in parts for r in p.interiors]
    if holes:
        hole_geom = shapely.union_all(holes)
        out.append(_problem("hole", [code], hole_geom, srid,
                            f"{len(holes)} hole(s) inside the grid: the area belongs to no "
                            "grid of this level", holes=len(holes)))
    area = float(shapely.area(geom))
    perimeter = float(shapely.length(geom))
    width = 2 * area / perimeter if perimeter else 0.0
    if area < s.sliver_area_m2 or width < s.sliver_width_m:
        out.append(_problem("sliver", [code], geom, srid,
                            f"sliver: {area:.0f} m², mean width {width:.1f} m (tolerance "
                            f"{s.sliver_area_m2:.0f} m², {s.sliver_width_m:.0f} m)",
                            mean_width_m=round(width, 2)))
    if s.target_area_m2 and (area < s.target_area_m2 * s.size_min_ratio
                             or area > s.target_area_m2 * s.size_max_ratio):
        out.append(_problem("size", [code], geom, srid,
                            f"area {area:.0f} m² is far from the target "
                            f"{s.target_area_m2:.0f} m²",
                            ratio=round(area / s.target_area_m2, 3)))
    return geom


def validate_group(codes, geoms, parent_code: str | None, parent_geom, s: Settings,
                   srid: int) -> list[dict]:
    """Problems of one sibling group (metric geometries) inside its parent (or None)."""
    out: list[dict] = []
    codes = list(codes)
    clean = [_check_grid(c, g, s, srid, out) for c, g in zip(codes, geoms)]
    keep = [i for i, g in enumerate(clean) if g is not None]
    codes = [codes[i] for i in keep]
    arr = np.array([clean[i] for i in keep], dtype=object)
    if len(arr) == 0:
        if parent_geom is not None:
            out.append(_problem("gap", [], parent_geom, srid,
                                f"parent {parent_code} has no children"))
        return out
    tol = s.gap_tolerance_m2
    valid_coverage = bool(shapely.coverage_is_valid(arr))
    tree = shapely.STRtree(arr)
    if not valid_coverage:
        left, right = tree.query(arr, predicate="intersects")
        pairs = left < right
        left, right = left[pairs], right[pairs]
        if len(left):
            inter = shapely.intersection(arr[left], arr[right])
            areas = shapely.area(inter)
            for i, j, g, a in zip(left, right, inter, areas):
                if a > tol:
                    out.append(_problem("overlap", [codes[i], codes[j]], polygonal(g), srid,
                                        f"{codes[i]} and {codes[j]} overlap by {a:.1f} m²"))
    union = shapely.coverage_union_all(arr) if valid_coverage else shapely.union_all(arr)
    if parent_geom is None:
        return out
    gaps = shapely.get_parts(polygonal(shapely.difference(parent_geom, union)))
    for gap in gaps:
        if shapely.area(gap) > tol:
            near = tree.query(shapely.buffer(gap, max(s.snap_m, 0.01)), predicate="intersects")
            out.append(_problem("gap", [codes[k] for k in near], gap, srid,
                                f"{shapely.area(gap):.1f} m² of parent {parent_code} is in "
                                "no child grid"))
    outside = shapely.difference(arr, parent_geom)
    for code, g, a in zip(codes, outside, shapely.area(outside)):
        if a > tol:
            out.append(_problem("outside_parent", [code], polygonal(g), srid,
                                f"{code}: {a:.1f} m² lies outside parent {parent_code}",
                                parent=parent_code))
    return out


def validate_layer(children: list[dict], parents: dict[str, object], srid: int,
                   settings: Settings | None = None) -> list[dict]:
    """Validate grids of one level against their parents.

    ``children``: dicts with ``code``, ``parent_code`` and ``geometry`` (shapely, EPSG:4326);
    ``parents``: parent code → shapely geometry (EPSG:4326). Children whose parent is not in
    ``parents`` are reported as ``outside_parent``; a parent listed there with no child shows
    up as a gap.
    """
    s = settings or Settings()
    out: list[dict] = []
    if not children:
        return out
    metric = to_metric(np.array([c["geometry"] for c in children], dtype=object), srid)
    groups: dict[str | None, list[int]] = {}
    for i, c in enumerate(children):
        groups.setdefault(c.get("parent_code"), []).append(i)
    parent_codes = [p for p in groups if p in parents]
    parent_metric = dict(zip(parent_codes, to_metric(
        np.array([parents[p] for p in parent_codes], dtype=object), srid))) \
        if parent_codes else {}
    seen_codes: dict[str, int] = {}
    for c in children:
        seen_codes[c["code"]] = seen_codes.get(c["code"], 0) + 1
    for code, n in seen_codes.items():
        if n > 1:
            idx = [i for i, c in enumerate(children) if c["code"] == code]
            g = shapely.union_all(metric[idx])
            out.append(_problem("overlap", [code], g, srid,
                                f"code {code} is used by {n} grids"))
    for parent, idx in sorted(groups.items(), key=lambda kv: kv[0] or ""):
        codes = [children[i]["code"] for i in idx]
        if parent not in parents:
            group_problems = validate_group(codes, metric[idx], parent, None, s, srid)
            for i in idx:
                g = metric[i]
                out.append(_problem("outside_parent", [children[i]["code"]], polygonal(g), srid,
                                    f"unknown parent {parent!r}", parent=parent))
            out.extend(group_problems)
            continue
        out.extend(validate_group(codes, metric[idx], parent, parent_metric[parent], s, srid))
    return out


def summary(problems: list[dict]) -> dict[str, int]:
    counts = {t: 0 for t in PROBLEM_TYPES}
    for p in problems:
        counts[p["type"]] += 1
    return counts


# Which problems make a layer unpublishable. Size is advice: a planner may keep a large park.
BLOCKING = frozenset({"invalid", "overlap", "gap", "outside_parent", "multipart", "hole",
                      "sliver"})


def blocking(problems: list[dict]) -> list[dict]:
    return [p for p in problems if p["type"] in BLOCKING]


# -- the database's current hierarchy --------------------------------------------------------
def current_layer(conn: Connection, level: str, prefix: str = "") -> list[dict]:
    rows = conn.execute(text("""
        SELECT g.code, p.code AS parent_code, ST_AsBinary(g.geom) AS wkb
        FROM grids g LEFT JOIN grids p ON p.id = g.parent_id
        WHERE g.level = :level AND g.valid_to IS NULL AND starts_with(g.code, :prefix)
        ORDER BY g.code
    """), {"level": level, "prefix": prefix}).all()
    geoms = shapely.from_wkb([r.wkb for r in rows]) if rows else []
    return [{"code": r.code, "parent_code": r.parent_code, "geometry": g}
            for r, g in zip(rows, geoms)]


def current_geoms(conn: Connection, codes) -> dict[str, object]:
    codes = sorted({c for c in codes if c})
    if not codes:
        return {}
    rows = conn.execute(text(
        "SELECT code, ST_AsBinary(geom) AS wkb FROM grids "
        "WHERE valid_to IS NULL AND code = ANY(:codes)"), {"codes": codes}).all()
    return dict(zip([r.code for r in rows], shapely.from_wkb([r.wkb for r in rows])))


CHILD_LEVEL = {"district": "street", "street": "community", "community": "unit"}


def validate_hierarchy(conn: Connection, settings: dict | None = None) -> dict:
    """Validate every level of the current generation: streets in the district, communities
    in streets, unit grids in communities."""
    srid = metric_srid(conn)
    layers = {lvl: current_layer(conn, lvl) for lvl in ("district", "street", "community",
                                                        "unit")}
    problems = []
    for parent_level, child_level in CHILD_LEVEL.items():
        parents = {c["code"]: c["geometry"] for c in layers[parent_level]}
        s = Settings.from_mapping(settings, child_level)
        for p in validate_layer(layers[child_level], parents, srid, s):
            p["level"] = child_level
            problems.append(p)
    return {"problems": problems, "summary": summary(problems),
            "grids": {lvl: len(v) for lvl, v in layers.items()}}


# -- repair ----------------------------------------------------------------------------------
def repair_group(geoms, parent_geom, s: Settings):
    """Snap and clean a sibling group (metric): make_valid, coverage_clean (gaps narrower than
    ``repair_gap_width_m`` closed, vertices within ``snap_m`` snapped, overlaps given to the
    neighbour with the longest shared border), then clip to the parent and drop holes/minor
    parts that clipping leaves."""
    arr = np.array([polygonal(shapely.make_valid(g)) for g in geoms], dtype=object)
    grid = REPAIR_GRID_M
    arr = shapely.set_precision(arr, grid)
    cleaned = shapely.coverage_clean(arr, gap_width=s.repair_gap_width_m,
                                     snapping_distance=s.snap_m)
    cleaned = shapely.set_precision(cleaned, grid)
    if parent_geom is not None:
        parent_geom = shapely.set_precision(parent_geom, grid)
        cleaned = shapely.intersection(cleaned, parent_geom, grid_size=grid)
        cleaned = _fill_edge_gaps(cleaned, parent_geom, s)
    return np.array([polygonal(shapely.make_valid(g)) for g in cleaned], dtype=object)


def _fill_edge_gaps(geoms, parent_geom, s: Settings):
    """coverage_clean closes enclosed gaps only; a narrow gap open to the parent's boundary is
    given to the sibling sharing the longest border with it (as coverage_clean would)."""
    geoms = np.array([polygonal(g) for g in geoms], dtype=object)
    union = shapely.union_all(geoms)
    for gap in shapely.get_parts(polygonal(shapely.difference(parent_geom, union))):
        area, perimeter = shapely.area(gap), shapely.length(gap)
        if not perimeter or 2 * area / perimeter >= s.repair_gap_width_m:
            continue
        edge = shapely.buffer(shapely.boundary(gap), max(s.snap_m, 0.01))
        shared = shapely.length(shapely.intersection(shapely.boundary(geoms), edge))
        if shared.max() <= 0:
            continue
        k = int(np.argmax(shared))
        geoms[k] = polygonal(shapely.union(geoms[k], gap, grid_size=REPAIR_GRID_M))
    return geoms


def repair_layer(children: list[dict], parents: dict[str, object], srid: int,
                 settings: Settings | None = None) -> tuple[list[dict], list[dict]]:
    """(repaired children, problems that remain) — nothing is stored."""
    s = settings or Settings()
    out = [dict(c) for c in children]
    groups: dict[str | None, list[int]] = {}
    for i, c in enumerate(children):
        groups.setdefault(c.get("parent_code"), []).append(i)
    metric = to_metric(np.array([c["geometry"] for c in children], dtype=object), srid) \
        if children else []
    for parent, idx in groups.items():
        parent_geom = to_metric(parents[parent], srid) if parent in parents else None
        fixed = to_wgs(repair_group(metric[idx], parent_geom, s), srid)
        for i, g in zip(idx, fixed):
            out[i]["geometry"] = g
    return out, validate_layer(out, parents, srid, s)

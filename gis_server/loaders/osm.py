"""Build a :class:`~gis_server.loaders.bulk.CityData` from a small OpenStreetMap PBF extract.

``load_pbf(path)`` reads the file once with pyrosm (in memory, nothing is downloaded) and
returns plain (Geo)DataFrames in EPSG:4326 for :func:`gis_server.loaders.bulk.write_city`.

Places and things come from OSM; people and organisation are synthesised (deterministic for a
``seed``):

**Metric CRS.** The UTM zone of the buildings (``GeoDataFrame.estimate_utm_crs``); its EPSG
code is ``metric_srid``. All geometric construction (extent, cells, slivers) happens there;
only finished geometries are transformed to EPSG:4326, vertex by vertex, so edges shared in
metres stay shared in degrees.

**Buildings.** Every footprint pyrosm's ``get_buildings`` returns, ids 1..n in pyrosm's order.
Invalid polygons are repaired with ``shapely.make_valid``; only the polygonal parts are kept,
and a footprint with no polygonal area left (or that is not polygonal at all) is dropped —
counted in ``CityData.extra["dropped_buildings"]``. ``osm_id`` is the way or relation id
(the two id spaces can collide in OSM; ``extra`` does not disambiguate them). ``address`` is
``"<addr:street> <addr:housenumber>, <addr:city>"`` from whatever parts are present (a
house number without a street is left out; no street and no city gives NULL).
``floors`` is ``building:levels`` (first number, rounded, 1..:data:`MAX_FLOORS`), else
``height`` / :data:`METRES_PER_FLOOR`, else :data:`DEFAULT_FLOORS` by building type
(:data:`DEFAULT_FLOORS_OTHER` for ``yes`` and unknown types). ``use`` is the building tag.

**Extent and grids.** The extent is the convex hull of all footprints grown by
:data:`EXTENT_MARGIN_M` (so every footprint, and its interior anchor point, is strictly
inside). It is cut by a square tessellation of ``cell_size_m`` whose lines lie on multiples of
the cell size in the UTM zone. The cutting is done by noding the grid lines with the extent
boundary and polygonising (``shapely.polygonize``), so neighbouring pieces share identical
vertices; each face is one piece (a convex extent cuts every cell into one convex piece,
but nothing depends on that). **Slivers**: a piece smaller than :data:`SLIVER_SHARE` of a
full cell is merged (``coverage_union``) into the neighbour it shares the longest edge with,
preferring a neighbour in the same community block; the smallest slivers go first and a
merged group that is still a sliver keeps merging. Every unit grid is therefore one valid
Polygon of at least 10 % of a cell (unless the whole extent is smaller than that).

Communities are blocks of ``block_cells`` × ``block_cells`` cells (a unit belongs to the block
of the cell it started from); one street holds all communities and the district is the
street. Parents are ``shapely.coverage_union_all`` of their exact children (in EPSG:4326), so
the union of children *is* the parent and children never overlap.

**Codes** (14 digits, CJ/T 213 style): ``county_code`` + street ``001`` + community ``ccc`` +
unit ``uu``; a community ends in ``00``, the street in ``00000``, the district is
``county_code + "00000000"``. Communities are numbered west→east along block rows, rows
north→south; units the same way inside their community, from ``01``. Names:
``"<name> district"``, ``"<name> street 001"``, ``"Community 003"``,
``"Community 003 grid 05"``; ``name`` defaults to the file name without ``.osm.pbf``.

**Facilities** are the POIs (amenity / shop / emergency / tourism) whose tag value is in
:data:`FACILITY_KINDS`, normalised to a ``kind``; other POIs (benches, vending machines…) are
ignored. Non-point POIs become their ``point_on_surface``. POIs outside the extent are
dropped (counted in ``extra``). ``is_key_place`` (重点场所) is true for the kinds in
:data:`KEY_PLACE_KINDS`: petrol stations (fire/explosion risk); bars, pubs, nightclubs, KTV
and internet cafés (entertainment venues under public-security supervision); hotels (guest
registration); schools and kindergartens (child safety); hospitals; elderly-care homes;
shopping malls, department stores and cinemas (crowded places).

**Households and persons.** A building houses households when its ``building`` tag is in
:data:`RESIDENTIAL_USES` (``yes`` counts unless the footprint also carries an ``amenity`` or
``office`` tag) and its footprint is at least :data:`MIN_RESIDENTIAL_FOOTPRINT_M2`.
Households per building = ``max(1, floors × round(footprint_m2 /``
:data:`FLOOR_AREA_PER_HOUSEHOLD_M2` ``))`` capped at :data:`MAX_HOUSEHOLDS_PER_BUILDING`;
rooms are numbered as Chinese flats (entrance ``unit`` with :data:`FLATS_PER_LANDING` flats a
floor, ``room`` = floor + door, e.g. ``"302"``). Household size is 1–5 with
:data:`HOUSEHOLD_SIZE_P` (mean ≈ 2.5, close to China's 2.62 in the 2020 census);
:data:`RENTAL_SHARE` of households rent. Persons: the head, a spouse, then children or a
parent; categories ``registered`` / ``floating`` (most members of rental households,
:data:`FLOATING_SHARE_RENTAL`, a few others) / ``special`` (:data:`SPECIAL_SHARE` of adults;
``special_group`` names the 特殊人群 type). Care groups (``elderly_alone``, ``disabled``,
``low_income``) go in ``special_group`` of registered/floating persons. Names, GB 11643 ID
numbers (valid check digit; born registered here carry ``county_code``) and phones come from
:mod:`gis_server.loaders.fakepeople`. Ages are relative to :data:`REFERENCE_DATE`, not today.

**Organisation.** :data:`DEPARTMENTS` at district level. Workers: one ``grid_admin`` per unit
grid (responsible); per community a ``leader`` (responsible), a ``coordinator``, a
``police`` officer, a ``firefighter`` and a ``volunteer``; a ``leader`` (responsible) and a
``supervisor`` for the street and for the district. Device ids are
``"osm-<county>-<worker id>"``.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from collections import defaultdict

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.strtree import STRtree

from . import fakepeople
from .bulk import (BUILDING_COLUMNS, DEPARTMENT_COLUMNS, FACILITY_COLUMNS, GRID_COLUMNS,
                   HOUSEHOLD_COLUMNS, PERSON_COLUMNS, WORKER_COLUMNS, WORKER_GRID_COLUMNS,
                   CityData)

# -- buildings ---------------------------------------------------------------------------------
MAX_FLOORS = 150
METRES_PER_FLOOR = 3.0
DEFAULT_FLOORS_OTHER = 3  # building=yes and unknown types
DEFAULT_FLOORS: dict[str, int] = {
    "apartments": 6, "residential": 5, "dormitory": 5, "hotel": 6, "office": 5,
    "hospital": 5, "university": 4, "college": 4, "government": 4, "commercial": 3,
    "civic": 3, "public": 3, "school": 3, "block": 4,
    "house": 2, "detached": 2, "semidetached_house": 2, "terrace": 2, "farm": 2,
    "kindergarten": 2, "retail": 2, "train_station": 2,
    "bungalow": 1, "cabin": 1, "static_caravan": 1, "houseboat": 1, "industrial": 1,
    "warehouse": 1, "garage": 1, "garages": 1, "carport": 1, "shed": 1, "hut": 1, "roof": 1,
    "kiosk": 1, "service": 1, "greenhouse": 1, "utility": 1, "pavilion": 1, "church": 1,
    "chapel": 1, "cathedral": 1, "mosque": 1, "temple": 1, "shrine": 1, "farm_auxiliary": 1,
    "barn": 1, "stable": 1, "construction": 1, "ruins": 1, "transformer_tower": 1,
}

# -- grids -------------------------------------------------------------------------------------
EXTENT_MARGIN_M = 20.0  # the convex hull of the footprints is grown by this much
SLIVER_SHARE = 0.10  # pieces below this share of a full cell merge into a neighbour
MAX_CELLS = 250_000  # refuse absurd tessellations (raise cell_size_m instead)

# -- facilities --------------------------------------------------------------------------------
# (OSM key, value) -> kind. Keys are tried in the order emergency, amenity, tourism, shop;
# ("shop", "*") catches every other shop.
FACILITY_KINDS: dict[tuple[str, str], str] = {
    ("emergency", "fire_hydrant"): "fire_hydrant",
    ("emergency", "defibrillator"): "defibrillator",
    ("emergency", "fire_extinguisher"): "fire_extinguisher",
    ("amenity", "school"): "school",
    ("amenity", "kindergarten"): "kindergarten",
    ("amenity", "childcare"): "kindergarten",
    ("amenity", "college"): "university",
    ("amenity", "university"): "university",
    ("amenity", "clinic"): "clinic",
    ("amenity", "doctors"): "clinic",
    ("amenity", "dentist"): "clinic",
    ("amenity", "hospital"): "hospital",
    ("amenity", "pharmacy"): "pharmacy",
    ("amenity", "police"): "police",
    ("amenity", "fire_station"): "fire_station",
    ("amenity", "fuel"): "gas_station",
    ("amenity", "charging_station"): "charging_station",
    ("amenity", "bar"): "bar",
    ("amenity", "pub"): "bar",
    ("amenity", "biergarten"): "bar",
    ("amenity", "nightclub"): "nightclub",
    ("amenity", "karaoke_box"): "karaoke",
    ("amenity", "internet_cafe"): "internet_cafe",
    ("amenity", "cinema"): "cinema",
    ("amenity", "theatre"): "theatre",
    ("amenity", "restaurant"): "restaurant",
    ("amenity", "fast_food"): "restaurant",
    ("amenity", "food_court"): "restaurant",
    ("amenity", "cafe"): "cafe",
    ("amenity", "bank"): "bank",
    ("amenity", "post_office"): "post_office",
    ("amenity", "library"): "library",
    ("amenity", "community_centre"): "community_centre",
    ("amenity", "social_centre"): "community_centre",
    ("amenity", "townhall"): "government",
    ("amenity", "courthouse"): "government",
    ("amenity", "nursing_home"): "elderly_care",
    ("amenity", "social_facility"): "social_facility",
    ("amenity", "place_of_worship"): "place_of_worship",
    ("amenity", "marketplace"): "market",
    ("amenity", "toilets"): "public_toilet",
    ("amenity", "waste_basket"): "waste_bin",
    ("amenity", "waste_disposal"): "waste_bin",
    ("amenity", "recycling"): "recycling",
    ("amenity", "bus_station"): "bus_station",
    ("amenity", "parking"): "parking",
    ("tourism", "hotel"): "hotel",
    ("tourism", "hostel"): "hotel",
    ("tourism", "guest_house"): "hotel",
    ("tourism", "motel"): "hotel",
    ("shop", "supermarket"): "supermarket",
    ("shop", "convenience"): "convenience_store",
    ("shop", "mall"): "mall",
    ("shop", "department_store"): "mall",
    ("shop", "*"): "shop",
}
KEY_PLACE_KINDS = frozenset({
    "gas_station", "bar", "nightclub", "karaoke", "internet_cafe", "hotel", "school",
    "kindergarten", "hospital", "elderly_care", "mall", "cinema",
})
_POI_KEYS = ("emergency", "amenity", "tourism", "shop")

# -- households and persons --------------------------------------------------------------------
RESIDENTIAL_USES = frozenset({
    "residential", "apartments", "house", "detached", "semidetached_house", "terrace",
    "dormitory", "bungalow", "farm", "static_caravan", "houseboat", "yes",
})
MIN_RESIDENTIAL_FOOTPRINT_M2 = 30.0  # smaller "yes" footprints are sheds and kiosks
FLOOR_AREA_PER_HOUSEHOLD_M2 = 100.0  # gross floor area per flat, common parts included
MAX_HOUSEHOLDS_PER_BUILDING = 600
FLATS_PER_LANDING = 2  # 一梯两户: flats per floor per entrance (单元)
HOUSEHOLD_SIZE_P = np.array([0.25, 0.30, 0.22, 0.15, 0.08])  # sizes 1..5
RENTAL_SHARE = 0.13
FLOATING_SHARE_RENTAL = 0.70  # of persons in rental households
FLOATING_SHARE_OWNER = 0.03
SPECIAL_SHARE = 0.004  # of adults: 特殊人群 (category "special")
SPECIAL_GROUPS = np.array(["community_correction", "released_prisoner", "drug_rehab",
                           "mental_disorder"])
DISABLED_SHARE = 0.015
LOW_INCOME_HOUSEHOLD_SHARE = 0.02
ELDERLY_ALONE_AGE = 70
REFERENCE_DATE = np.datetime64("2025-01-01")

# -- organisation ------------------------------------------------------------------------------
DEPARTMENTS = [  # code, name
    ("urban_mgmt", "Urban management bureau (城管)"),
    ("municipal", "Municipal works (市政)"),
    ("greenery", "Parks and greenery (园林绿化)"),
    ("traffic", "Traffic police and roads (交通)"),
    ("police", "Public security bureau (公安)"),
    ("fire", "Fire and rescue (消防救援)"),
    ("sanitation", "Sanitation (环卫)"),
]
COMMUNITY_STAFF = [  # role, department code, responsible for the community grid
    ("leader", None, True), ("coordinator", None, False), ("police", "police", False),
    ("firefighter", "fire", False), ("volunteer", None, False),
]
UPPER_STAFF = [("leader", None, True), ("supervisor", "urban_mgmt", False)]


# ----------------------------------------------------------------------------------------------
def load_pbf(path: str, *, cell_size_m: float = 200.0, county_code: str = "990001",
             name: str | None = None, seed: int = 1, block_cells: int = 4) -> CityData:
    """Read ``path`` (a small ``.osm.pbf``) and build a whole city from it.

    ``cell_size_m``: side of the square unit-grid cells in metres; ``block_cells``: a community
    is ``block_cells`` × ``block_cells`` cells (at most 99 units per community); ``seed`` makes
    the synthetic people and workers reproducible. Raises ``ValueError`` when the file has no
    building footprints (grids are drawn around the buildings).
    """
    if not re.fullmatch(r"[0-9]{6}", county_code):
        raise ValueError(f"county_code must be 6 digits, got {county_code!r}")
    if not cell_size_m > 0:
        raise ValueError("cell_size_m must be positive")
    if not 1 <= block_cells or block_cells * block_cells > 99:
        raise ValueError("block_cells must be 1..9 (at most 99 unit grids per community)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    name = name or _stem(path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    import pyrosm  # imported lazily: pyrosm is slow to import and only needed here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        osm = pyrosm.OSM(path, engine="in_memory", progress=False)
        raw = osm.get_buildings()
        if raw is None or len(raw) == 0:
            raise ValueError(
                f"{os.path.basename(path)} contains no buildings (no OSM way or relation "
                f"tagged building=*): load_pbf draws its grids around building footprints, "
                f"so it needs an extract of a built-up area")
        pois = osm.get_pois(custom_filter={
            "amenity": True, "shop": True, "tourism": True, "emergency": True})
    timings["parse"] = time.perf_counter() - t0

    t = time.perf_counter()
    buildings, tags, dropped = _clean_buildings(raw)
    if buildings.empty:
        raise ValueError(f"{os.path.basename(path)}: none of its {len(raw)} buildings has a "
                         f"usable polygonal footprint")
    metric_crs = buildings.estimate_utm_crs()
    metric_srid = metric_crs.to_epsg()
    buildings_m = buildings.geometry.to_crs(metric_srid)
    footprint_m2 = shapely.area(buildings_m.values)
    timings["buildings"] = time.perf_counter() - t

    t = time.perf_counter()
    hull = shapely.convex_hull(shapely.multipoints(shapely.get_coordinates(buildings_m.values)))
    extent = shapely.convex_hull(shapely.buffer(hull, EXTENT_MARGIN_M))
    pieces = _tessellate(extent, cell_size_m, block_cells)
    pieces, merged = _merge_slivers(pieces, SLIVER_SHARE * cell_size_m ** 2)
    grids = _grid_hierarchy(pieces, metric_srid, county_code, name)
    timings["grids"] = time.perf_counter() - t

    t = time.perf_counter()
    district_geom = grids.geometry.iloc[0]
    facilities, outside = _facilities(pois, district_geom)
    rng = np.random.default_rng(seed)
    households, persons = _people(rng, buildings, raw_tags=tags,
                                  footprint_m2=footprint_m2, county_code=county_code)
    departments, workers, worker_grids = _organisation(rng, grids, county_code)
    timings["synthesis"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    repaired = int(buildings["repaired"].sum())
    buildings = gpd.GeoDataFrame(buildings[BUILDING_COLUMNS], geometry="geometry",
                                 crs="EPSG:4326")
    extra = {
        "pyrosm_buildings": int(len(raw)),
        "dropped_buildings": dropped,
        "repaired_buildings": repaired,
        "facilities_outside_extent": outside,
        "slivers_merged": merged,
        "cell_size_m": float(cell_size_m),
        "block_cells": int(block_cells),
        "extent_area_m2": float(extent.area),
        "seed": seed,
        "timings_s": timings,
    }
    return CityData(
        name=name, county_code=county_code, metric_srid=int(metric_srid),
        source=f"osm:{os.path.basename(path)}", grids=grids,
        buildings=buildings, households=households[HOUSEHOLD_COLUMNS],
        persons=persons[PERSON_COLUMNS], facilities=facilities[FACILITY_COLUMNS],
        departments=departments[DEPARTMENT_COLUMNS], workers=workers[WORKER_COLUMNS],
        worker_grids=worker_grids[WORKER_GRID_COLUMNS], extra=extra)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".osm.pbf", ".pbf"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]


# -- buildings ---------------------------------------------------------------------------------
def _column(frame: pd.DataFrame, key: str) -> pd.Series:
    """A tag column as object strings (None where missing), even if pyrosm did not emit it."""
    if key in frame.columns:
        col = frame[key].astype(object)
        return col.where(col.notna() & (col.astype(str).str.strip() != ""), None)
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Keep only the polygonal parts of each geometry (None when nothing is left)."""
    out = np.empty(len(geoms), dtype=object)
    for i, g in enumerate(geoms):
        if g is None or g.is_empty:
            out[i] = None
            continue
        kind = g.geom_type
        if kind in ("Polygon", "MultiPolygon"):
            out[i] = g
            continue
        parts = [p for p in shapely.get_parts(g)
                 if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
        if not parts:
            out[i] = None
            continue
        merged = shapely.union_all(parts)
        out[i] = merged if merged.geom_type in ("Polygon", "MultiPolygon") else None
    return out


def _clean_buildings(raw: gpd.GeoDataFrame
                     ) -> tuple[gpd.GeoDataFrame, dict[str, np.ndarray], dict[str, int]]:
    """Footprints with ids 1..n (+ a ``repaired`` flag), tags the household rule needs, and
    how many footprints were dropped and why."""
    geoms = np.asarray(raw.geometry.values, dtype=object)
    dropped = {"not_polygonal": 0, "empty_after_repair": 0}
    polygonal_in = np.array([g is not None and g.geom_type in ("Polygon", "MultiPolygon")
                             and not g.is_empty for g in geoms])
    dropped["not_polygonal"] = int((~polygonal_in).sum())
    invalid = polygonal_in & ~shapely.is_valid(np.where(polygonal_in, geoms, None))
    fixed = geoms.copy()
    if invalid.any():
        fixed[invalid] = _polygonal(shapely.make_valid(geoms[invalid]))
    keep = polygonal_in & np.array([g is not None and not g.is_empty and g.area > 0
                                    for g in fixed])
    dropped["empty_after_repair"] = int((polygonal_in & ~keep).sum())

    src = raw.loc[keep]
    street, number, city = (_column(src, k) for k in
                            ("addr:street", "addr:housenumber", "addr:city"))
    use = _column(src, "building").fillna("yes")
    out = gpd.GeoDataFrame({
        "id": np.arange(1, len(src) + 1, dtype=np.int64),
        "name": _column(src, "name").to_numpy(),
        "address": _addresses(street, number, city),
        "floors": _floors(_column(src, "building:levels"), _column(src, "height"),
                          use).to_numpy(),
        "use": use.to_numpy(),
        "osm_id": pd.to_numeric(src["id"]).astype("int64").to_numpy(),
        "repaired": invalid[keep],
    }, geometry=list(fixed[keep]), crs="EPSG:4326")
    tags = {key: _column(src, key).to_numpy() for key in ("amenity", "office")}
    return out, tags, dropped


def _addresses(street: pd.Series, number: pd.Series, city: pd.Series) -> np.ndarray:
    # A house number means nothing without its street: it is left out when there is none.
    line = (street.fillna("") + " " + number.where(street.notna(), "").fillna("")).str.strip()
    full = np.where(city.notna() & (line != ""), line + ", " + city.fillna(""),
                    np.where(line != "", line, city.fillna("")))
    return np.where(full == "", None, full).astype(object)


def _first_number(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.astype("string").str.replace(",", ".", regex=False)
                         .str.extract(r"(\d+(?:\.\d+)?)", expand=False), errors="coerce")


def _floors(levels: pd.Series, height: pd.Series, use: pd.Series) -> pd.Series:
    from_levels = np.floor(_first_number(levels) + 0.5)
    from_height = np.floor(_first_number(height) / METRES_PER_FLOOR + 0.5)
    default = use.map(DEFAULT_FLOORS).fillna(DEFAULT_FLOORS_OTHER)
    floors = from_levels.where(from_levels >= 1, from_height.where(from_height >= 1, default))
    return floors.clip(1, MAX_FLOORS).astype("int64")


# -- grids -------------------------------------------------------------------------------------
def _tessellate(extent, cell: float, k: int) -> pd.DataFrame:
    """Cut ``extent`` (metric) by square cells; one row per face with its cell and block."""
    xmin, ymin, xmax, ymax = extent.bounds
    x0 = np.floor(xmin / cell) * cell
    y_top = np.ceil(ymax / cell) * cell
    ncols = max(1, int(np.ceil((xmax - x0) / cell)))
    nrows = max(1, int(np.ceil((y_top - ymin) / cell)))
    if ncols * nrows > MAX_CELLS:
        raise ValueError(f"{ncols * nrows} cells of {cell} m: too many, raise cell_size_m")
    x1, y_bottom = x0 + ncols * cell, y_top - nrows * cell
    xs = x0 + cell * np.arange(ncols + 1)
    ys = y_top - cell * np.arange(nrows + 1)
    lines = [shapely.LineString([(x, y_bottom), (x, y_top)]) for x in xs[1:-1]]
    lines += [shapely.LineString([(x0, y), (x1, y)]) for y in ys[1:-1]]
    lines.append(extent.exterior)
    noded = shapely.union_all(lines)
    faces = np.asarray(shapely.get_parts(shapely.polygonize(shapely.get_parts(noded))))
    probe = shapely.point_on_surface(faces)
    inside = shapely.contains(extent, probe)
    faces, probe = faces[inside], probe[inside]
    col = np.clip(((shapely.get_x(probe) - x0) // cell).astype(int), 0, ncols - 1)
    row = np.clip(((y_top - shapely.get_y(probe)) // cell).astype(int), 0, nrows - 1)
    return pd.DataFrame({"row": row, "col": col, "brow": row // k, "bcol": col // k,
                         "geometry": faces})


def _merge_slivers(pieces: pd.DataFrame, min_area: float) -> tuple[pd.DataFrame, int]:
    """Merge pieces smaller than ``min_area`` into edge neighbours (see module docstring)."""
    geoms = pieces["geometry"].to_numpy()
    n = len(geoms)
    area = shapely.area(geoms)
    if n < 2 or (area >= min_area).all():
        return pieces.reset_index(drop=True), 0
    # Shared edge length between every pair of pieces that touch.
    tree = STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pair = left < right
    left, right = left[pair], right[pair]
    shared = shapely.length(shapely.intersection(shapely.boundary(geoms[left]),
                                                 shapely.boundary(geoms[right])))
    edges: dict[int, dict[int, float]] = defaultdict(dict)
    for a, b, length in zip(left, right, shared):
        if length > 1e-6:
            edges[a][b] = length
            edges[b][a] = length

    block = list(zip(pieces["brow"], pieces["bcol"]))
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    group_area = dict(enumerate(area))
    members = {i: [i] for i in range(n)}
    merged = 0

    def neighbours_of(g: int) -> dict[int, float]:
        """Groups touching group ``g`` along an edge, with the shared length."""
        out: dict[int, float] = defaultdict(float)
        for m in members[g]:
            for other, length in edges[m].items():
                r = root(other)
                if r != g:
                    out[r] += length
        return out

    stuck: set[int] = set()  # slivers with no edge neighbour (an island): left alone
    while True:
        slivers = [g for g in members if group_area[g] < min_area and g not in stuck]
        if not slivers:
            break
        g = min(slivers, key=lambda g: (group_area[g], g))  # smallest first
        neighbours = neighbours_of(g)
        if not neighbours:
            stuck.add(g)
            continue
        target = max(neighbours, key=lambda r: (block[r] == block[g], neighbours[r],
                                                group_area[r], -r))
        parent[g] = target
        members[target].extend(members.pop(g))
        group_area[target] += group_area.pop(g)
        merged += 1

    rows = []
    for g, ms in members.items():
        geom = geoms[g] if len(ms) == 1 else shapely.coverage_union_all(geoms[ms])
        if geom.geom_type != "Polygon":
            raise RuntimeError(f"merging slivers made a {geom.geom_type}")
        rows.append({**pieces.iloc[g][["row", "col", "brow", "bcol"]].to_dict(),
                     "geometry": geom})
    return pd.DataFrame(rows), merged


def _grid_hierarchy(pieces: pd.DataFrame, metric_srid: int, county: str,
                    city: str) -> gpd.GeoDataFrame:
    units = pieces.sort_values(["brow", "bcol", "row", "col"]).reset_index(drop=True)
    units["geometry"] = gpd.GeoSeries(units["geometry"], crs=metric_srid).to_crs(4326).values
    block_keys = units[["brow", "bcol"]].drop_duplicates().reset_index(drop=True)
    if len(block_keys) > 999:
        raise ValueError(f"{len(block_keys)} communities (max 999): raise cell_size_m")
    block_seq = {(r, c): i + 1 for i, (r, c) in enumerate(block_keys.itertuples(index=False))}
    units["cseq"] = [block_seq[(r, c)] for r, c in zip(units["brow"], units["bcol"])]
    units["useq"] = units.groupby("cseq").cumcount() + 1
    if units["useq"].max() > 99:
        raise ValueError("more than 99 unit grids in a community: lower block_cells")

    street_code = county + "001" + "00000"
    district_code = county + "00000000"
    comm_code = {s: f"{county}001{s:03d}00" for s in block_seq.values()}
    unit_rows = pd.DataFrame({
        "code": [f"{county}001{c:03d}{u:02d}" for c, u in zip(units["cseq"], units["useq"])],
        "name": [f"Community {c:03d} grid {u:02d}" for c, u in zip(units["cseq"], units["useq"])],
        "level": "unit",
        "parent_code": units["cseq"].map(comm_code),
        "geometry": units["geometry"],
    })
    comm_geoms = [shapely.coverage_union_all(grp["geometry"].to_numpy())
                  for _, grp in units.groupby("cseq", sort=True)]
    comm_rows = pd.DataFrame({
        "code": [comm_code[s] for s in sorted(comm_code)],
        "name": [f"Community {s:03d}" for s in sorted(comm_code)],
        "level": "community", "parent_code": street_code, "geometry": comm_geoms,
    })
    street_geom = shapely.coverage_union_all(np.asarray(comm_geoms, dtype=object))
    top = pd.DataFrame({
        "code": [district_code, street_code],
        "name": [f"{city} district", f"{city} street 001"],
        "level": ["district", "street"], "parent_code": [None, district_code],
        "geometry": [street_geom, street_geom],
    })
    grids = pd.concat([top, comm_rows, unit_rows], ignore_index=True)
    return gpd.GeoDataFrame(grids[GRID_COLUMNS], geometry="geometry", crs="EPSG:4326")


# -- facilities --------------------------------------------------------------------------------
def _facilities(pois: gpd.GeoDataFrame | None, territory) -> tuple[gpd.GeoDataFrame, int]:
    empty = gpd.GeoDataFrame({c: [] for c in FACILITY_COLUMNS if c != "geometry"},
                             geometry=[], crs="EPSG:4326")
    if pois is None or len(pois) == 0:
        return empty, 0
    kind = pd.Series([None] * len(pois), index=pois.index, dtype=object)
    for key in _POI_KEYS:
        values = _column(pois, key)
        mapped = values.map(lambda v, key=key: FACILITY_KINDS.get((key, v)))
        if key == "shop":
            mapped = mapped.where(mapped.notna() | values.isna(), FACILITY_KINDS[("shop", "*")])
        kind = kind.where(kind.notna(), mapped)
    keep = kind.notna().to_numpy() & pois.geometry.notna().to_numpy() & \
        ~pois.geometry.is_empty.to_numpy()
    src = pois.loc[keep]
    points = shapely.point_on_surface(np.asarray(src.geometry.values, dtype=object))
    shapely.prepare(territory)
    inside = shapely.intersects(territory, points)
    src, points = src.loc[inside], points[inside]
    kinds = kind.loc[keep].loc[inside].to_numpy()
    out = gpd.GeoDataFrame({
        "kind": kinds,
        "name": _column(src, "name").to_numpy(),
        "address": _addresses(*(_column(src, k) for k in
                                ("addr:street", "addr:housenumber", "addr:city"))),
        "is_key_place": np.isin(kinds, list(KEY_PLACE_KINDS)),
        "osm_id": pd.to_numeric(src["id"]).astype("int64").to_numpy(),
    }, geometry=list(points), crs="EPSG:4326")
    return out.reset_index(drop=True), int((~inside).sum())


# -- households and persons --------------------------------------------------------------------
def _people(rng: np.random.Generator, buildings: gpd.GeoDataFrame, raw_tags: dict,
            footprint_m2: np.ndarray, county_code: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    use = buildings["use"].to_numpy()
    other_use = pd.notna(raw_tags["amenity"]) | pd.notna(raw_tags["office"])
    residential = (np.isin(use, list(RESIDENTIAL_USES)) & (footprint_m2
                   >= MIN_RESIDENTIAL_FOOTPRINT_M2) & ~((use == "yes") & other_use))
    floors = buildings["floors"].to_numpy()
    per_floor = np.floor(footprint_m2 / FLOOR_AREA_PER_HOUSEHOLD_M2 + 0.5)
    n_hh = np.where(residential,
                    np.clip(floors * per_floor, 1, MAX_HOUSEHOLDS_PER_BUILDING), 0).astype(int)
    total = int(n_hh.sum())
    building_id = np.repeat(buildings["id"].to_numpy(), n_hh)
    starts = np.repeat(np.cumsum(n_hh) - n_hh, n_hh)
    idx = np.arange(total) - starts  # 0.. within the building
    per_entrance = FLATS_PER_LANDING * np.repeat(floors, n_hh)
    entrance = idx // per_entrance + 1
    within = idx % per_entrance
    floor_no = within // FLATS_PER_LANDING + 1
    door = within % FLATS_PER_LANDING + 1
    size = rng.choice(np.arange(1, 6), size=total, p=HOUSEHOLD_SIZE_P)
    rental = rng.random(total) < RENTAL_SHARE
    low_income = rng.random(total) < LOW_INCOME_HOUSEHOLD_SHARE
    households = pd.DataFrame({
        "id": np.arange(1, total + 1, dtype=np.int64),
        "building_id": building_id,
        "unit": entrance.astype(str),
        "room": np.char.add(floor_no.astype(str), np.char.zfill(door.astype(str), 2)),
        "size": size,
        "is_rental": rental,
    })

    # persons, household by household: position 0 head, 1 spouse or parent, then children.
    n = int(size.sum())
    hh = np.repeat(np.arange(total), size)
    pos = np.arange(n) - np.repeat(np.cumsum(size) - size, size)
    head_age = np.clip(np.round(rng.normal(48, 15, total)), 20, 92).astype(int)
    relation = np.full(n, "child", dtype=object)
    relation[pos == 0] = "head"
    second = pos == 1
    relation[second] = np.where(rng.random(n)[second] < 0.85, "spouse", "parent")
    later = pos >= 2
    relation[later] = np.where(rng.random(n)[later] < 0.85, "child", "parent")
    age = np.repeat(head_age, size).astype(float)
    age[relation == "spouse"] += rng.integers(-5, 6, n)[relation == "spouse"]
    child = relation == "child"
    age[child] -= rng.integers(20, 38, n)[child]
    par = relation == "parent"
    age[par] += rng.integers(22, 35, n)[par]
    age = np.clip(age, 0, 104).astype(int)
    head_gender = np.where(rng.random(total) < 0.6, "M", "F")
    gender = fakepeople.random_genders(rng, n)
    gender[pos == 0] = head_gender
    spouse = relation == "spouse"
    gender[spouse] = np.where(np.repeat(head_gender, size)[spouse] == "M", "F", "M")
    born = (REFERENCE_DATE - (age * 365.25).astype("timedelta64[D]")
            - rng.integers(0, 365, n).astype("timedelta64[D]"))

    in_rental = np.repeat(rental, size)
    floating = rng.random(n) < np.where(in_rental, FLOATING_SHARE_RENTAL, FLOATING_SHARE_OWNER)
    special = (age >= 18) & (rng.random(n) < SPECIAL_SHARE)
    category = np.where(special, "special", np.where(floating, "floating", "registered"))
    group = np.full(n, None, dtype=object)
    group[np.repeat(low_income, size)] = "low_income"
    group[rng.random(n) < DISABLED_SHARE] = "disabled"
    group[(np.repeat(size, size) == 1) & (age >= ELDERLY_ALONE_AGE)] = "elderly_alone"
    group[special] = SPECIAL_GROUPS[rng.integers(0, len(SPECIAL_GROUPS), n)][special]

    home = np.where(floating, fakepeople.HOME_AREA_CODES[
        rng.integers(0, len(fakepeople.HOME_AREA_CODES), n)], county_code)
    names = fakepeople.names(rng, gender)
    persons = pd.DataFrame({
        "household_id": households["id"].to_numpy()[hh],
        "name": names,
        "id_number": fakepeople.id_numbers(rng, home, born, gender),
        "phone": np.where(age >= 12, fakepeople.phones(rng, n), None),
        "gender": gender,
        "birth_date": born.astype("datetime64[s]"),
        "category": category,
        "relation": relation,
        "special_group": group,
    })
    households["head_name"] = names[pos == 0]
    return households, persons


# -- organisation ------------------------------------------------------------------------------
def _organisation(rng: np.random.Generator, grids: gpd.GeoDataFrame, county: str):
    district_code = grids.loc[grids["level"] == "district", "code"].iloc[0]
    departments = pd.DataFrame({
        "code": [c for c, _ in DEPARTMENTS], "name": [nm for _, nm in DEPARTMENTS],
        "grid_code": district_code,
        "phone": [f"0999-6{rng.integers(0, 10_000_000):07d}" for _ in DEPARTMENTS],
    })
    roles, depts, codes, responsible = [], [], [], []

    def add(role, dept, code, resp):
        roles.append(role)
        depts.append(dept)
        codes.append(code)
        responsible.append(resp)

    for level, staff in (("district", UPPER_STAFF), ("street", UPPER_STAFF),
                         ("community", COMMUNITY_STAFF)):
        for code in grids.loc[grids["level"] == level, "code"]:
            for role, dept, resp in staff:
                add(role, dept, code, resp)
    for code in grids.loc[grids["level"] == "unit", "code"]:
        add("grid_admin", None, code, True)
    n = len(roles)
    ids = np.arange(1, n + 1)
    workers = pd.DataFrame({
        "id": ids,
        "name": fakepeople.names(rng, fakepeople.random_genders(rng, n)),
        "role": roles,
        "phone": fakepeople.phones(rng, n),
        "device_id": [f"osm-{county}-{i:06d}" for i in ids],
        "department_code": depts,
    })
    worker_grids = pd.DataFrame({"worker_id": ids, "grid_code": codes,
                                 "is_responsible": responsible})
    return departments, workers, worker_grids

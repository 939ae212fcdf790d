"""A synthetic Haidian (海淀区, Beijing) city for demos, tests and benchmarks.

``generate(size, seed)`` returns a :class:`~gis_server.loaders.bulk.CityData` ready for
:func:`~gis_server.loaders.bulk.write_city`. Everything is numpy-vectorised (no Faker, no ORM),
and deterministic for a given ``(size, seed)``.

Geometry
    One lattice of ``(NX+1) x (NY+1)`` nodes, 100 m apart, is laid out in metres in
    EPSG:4548 (CGCS2000 / 3-degree Gauss-Kruger CM 117E) around 116.30°E 39.98°N. Interior
    nodes are jittered by up to ±20 % of the cell size in x and y (boundary nodes only along
    the boundary), which keeps every quad convex. Unit grids are the lattice cells, so
    neighbours share exact vertices and the cells tile the district with no gap and no
    overlap. A community is a block of ``UX x UY`` cells, a street a block of ``CX x CY``
    communities, the district all streets. Cells are transformed to EPSG:4326 and every parent
    is the ``shapely.coverage_union_all`` of its children (in EPSG:4326), i.e. exactly their
    union.

Codes (CJ/T 213 style, 14 digits)
    ``110108`` + street ``SSS`` + community ``CCC`` + unit ``UU``; parents end in zeros. Units
    are numbered west→east along a row, rows north→south, inside their community; communities
    inside their street and streets inside the district the same way.

Buildings are small quads strictly inside their cell (placed in bilinear ``(u, v)`` cell
coordinates on a per-cell slot lattice with margins), households live in residential and mixed
buildings (``floors x dwellings per floor`` dwellings, of which a calibrated share is
registered), persons have valid GB 11643-1999 ID numbers consistent with birth date and gender.

Extra columns (ignored by ``write_city``): ``buildings.grid_code`` and ``facilities.grid_code``
are the unit grid the generator put them in.
"""
from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from .bulk import (BUILDING_COLUMNS, DEPARTMENT_COLUMNS, FACILITY_COLUMNS, GRID_COLUMNS,
                   HOUSEHOLD_COLUMNS, PERSON_COLUMNS, WORKER_COLUMNS, WORKER_GRID_COLUMNS,
                   CityData)
from .fakepeople import (FEMALE_CHARS, ID_CHECK_CHARS, ID_WEIGHTS, MALE_CHARS,
                         PHONE_PREFIXES, SURNAME_P, SURNAMES, group_rank)

COUNTY_CODE = "110108"
DISTRICT_NAME = "海淀区"
METRIC_SRID = 4548  # CGCS2000 / 3-degree Gauss-Kruger CM 117E
CENTER_LONLAT = (116.30, 39.98)
CELL_M = 100.0  # unit grid ≈ 100 m x 100 m ≈ 10,000 m²
JITTER = 0.2  # of the cell size; <= 0.25 keeps every quad convex
REFERENCE_DATE = np.datetime64("2025-06-30")  # "today" for ages, fixed for determinism


@dataclass(frozen=True)
class Layout:
    """Block structure: ``(columns west→east, rows north→south)`` at each level."""
    streets: tuple[int, int]
    communities: tuple[int, int]  # per street
    units: tuple[int, int]  # per community
    buildings: int  # total
    households: int  # total (approximate: drawn binomially)
    volunteers: tuple[int, int]  # per unit grid, inclusive range

    @property
    def nx(self) -> int:
        return self.streets[0] * self.communities[0] * self.units[0]

    @property
    def ny(self) -> int:
        return self.streets[1] * self.communities[1] * self.units[1]

    @property
    def n_units(self) -> int:
        return self.nx * self.ny


SIZES: dict[str, Layout] = {
    # 2 streets x 2 communities x 4 units = 16 unit grids, ~8 buildings per unit grid.
    "small": Layout((2, 1), (1, 2), (2, 2), buildings=128, households=420, volunteers=(1, 1)),
    # 3 x 4 x 9 = 108 unit grids.
    "demo": Layout((3, 1), (2, 2), (3, 3), buildings=3_000, households=10_000,
                   volunteers=(1, 2)),
    # 25 x 6 x 20 = 3,000 unit grids (5 km x 6 km); ~9,750 workers.
    "large": Layout((5, 5), (2, 3), (5, 4), buildings=300_000, households=1_000_000,
                    volunteers=(1, 3)),
}

# --- vocabularies ---------------------------------------------------------------------------
STREET_NAMES = [
    "学院路", "中关村", "万寿路", "羊坊店", "甘家口", "八里庄", "紫竹院", "北下关", "北太平庄",
    "海淀", "青龙桥", "清华园", "燕园", "香山", "清河", "花园路", "西三旗", "马连洼", "田村路",
    "上地", "万柳", "曙光", "永定路", "东升", "学清路", "西北旺", "温泉", "四季青", "苏家坨",
    "上庄",
]
_COMMUNITY_FIRST = list("知双科明志翠万紫青花清燕光育文华锦和安永康福瑞新长兴春宝金泉松")
_COMMUNITY_SECOND = list("春榆园光新微泉竹林河芳府景湖秀馨源庭苑山阳华安桥平宁德丰")
_COMMUNITY_SUFFIX = ["", "", "", "里", "园", "苑", "东里", "西里", "北里", "南里", "家园",
                     "新村"]

BEIJING_REGIONS = np.array([110101, 110102, 110105, 110106, 110107, 110111, 110114, 110115])
OTHER_REGIONS = np.array([
    130102, 130203, 130602, 131002, 120101, 140105, 150102, 210102, 220102, 230102, 320102,
    330106, 340104, 341202, 350102, 360102, 370102, 370202, 371302, 410105, 411302, 420106,
    430102, 440106, 500103, 510104, 610113, 620102])

BUILDING_USES = np.array(["residential", "mixed", "commercial", "office", "public", "school"])
BUILDING_USE_P = np.array([0.72, 0.07, 0.09, 0.05, 0.05, 0.02])

RELATIONS = np.array(["户主", "配偶", "子女", "父母", "孙子女", "兄弟姐妹"])
SPECIAL_GROUPS = np.array(["独居老人", "空巢老人", "残疾人", "低保户"])

# kind: (label, expected count per unit grid, key place?)
FACILITY_KINDS: dict[str, tuple[str, float, bool]] = {
    "fire_hydrant": ("消火栓", 2.5, False),
    "supermarket": ("超市", 0.35, False),
    "pharmacy": ("药店", 0.25, False),
    "clinic": ("社区卫生服务站", 0.12, False),
    "kindergarten": ("幼儿园", 0.12, False),
    "school": ("小学", 0.08, False),
    "gas_station": ("加油站", 0.03, True),
    "internet_cafe": ("网吧", 0.05, True),
    "hotel": ("旅馆", 0.06, True),
    "ktv": ("KTV", 0.03, True),
}

DEPARTMENTS = [
    ("urban_mgmt", "海淀区城管执法局"), ("municipal", "海淀区市政市容委"),
    ("greenery", "海淀区园林绿化局"), ("traffic", "海淀区交通委"), ("housing", "海淀区住建委"),
    ("police", "海淀公安分局"), ("fire", "海淀区消防救援支队"), ("sanitation", "海淀区环卫中心"),
    ("market", "海淀区市场监管局"), ("water", "海淀区水务局"),
    ("environment", "海淀区生态环境局"), ("civil_affairs", "海淀区民政局"),
]
COMMUNITY_ROLES = ["coordinator", "police", "firefighter", "supervisor", "leader"]


# --- small vectorised helpers ----------------------------------------------------------------
def _cat(*parts) -> np.ndarray:
    """Element-wise string concatenation of arrays / scalars (numpy ``StringDType``-free)."""
    out = np.asarray(parts[0]).astype(str)
    for p in parts[1:]:
        out = np.strings.add(out, np.asarray(p).astype(str))
    return out


def _zfill(values, width: int) -> np.ndarray:
    return np.strings.zfill(np.asarray(values).astype(str), width)


def _str_series(arr, index=None) -> pd.Series:
    return pd.Series(np.asarray(arr, dtype=object), index=index, dtype="str")


def _pick(rng: np.random.Generator, values: np.ndarray, p, n: int) -> np.ndarray:
    return values[rng.choice(len(values), size=n, p=p)]


def _random_names(rng: np.random.Generator, male: np.ndarray,
                  surnames: np.ndarray | None = None) -> np.ndarray:
    """Chinese names: surname + one or two gendered given-name characters."""
    n = len(male)
    if surnames is None:
        surnames = _pick(rng, SURNAMES, SURNAME_P, n)
    g1 = np.where(male, MALE_CHARS[rng.integers(0, len(MALE_CHARS), n)],
                  FEMALE_CHARS[rng.integers(0, len(FEMALE_CHARS), n)])
    g2 = np.where(male, MALE_CHARS[rng.integers(0, len(MALE_CHARS), n)],
                  FEMALE_CHARS[rng.integers(0, len(FEMALE_CHARS), n)])
    g2 = np.where(rng.random(n) < 0.7, g2, "")
    return _cat(surnames, g1, g2)


def _phones(rng: np.random.Generator, n: int, unique_from: np.ndarray | None = None) -> np.ndarray:
    """11-digit mobile numbers; ``unique_from`` (distinct ints) makes the last 8 digits unique."""
    prefix = PHONE_PREFIXES[rng.integers(0, len(PHONE_PREFIXES), n)].astype(np.int64)
    if unique_from is None:
        rest = rng.integers(0, 10**8, n, dtype=np.int64)
    else:
        rest = (np.asarray(unique_from, dtype=np.int64) * 7_919_317
                + int(rng.integers(0, 10**8))) % 10**8
    return (prefix * 10**8 + rest).astype(str)


def id_check_digit(first17: np.ndarray) -> np.ndarray:
    """GB 11643-1999 check characters for 17-digit integers."""
    x = np.asarray(first17, dtype=np.int64)
    total = np.zeros(len(x), dtype=np.int64)
    for pos in range(16, -1, -1):  # last digit first
        total += (x % 10) * ID_WEIGHTS[pos]
        x = x // 10
    return ID_CHECK_CHARS[total % 11]


def id_number_is_valid(id_number: str) -> bool:
    """True when an 18-character ID number has the right GB 11643-1999 check character."""
    if len(id_number) != 18 or not id_number[:17].isdigit():
        return False
    total = sum(int(c) * w for c, w in zip(id_number[:17], ID_WEIGHTS))
    return "10X98765432"[total % 11] == id_number[17].upper()


def _imei(payload14: np.ndarray) -> np.ndarray:
    """15-digit IMEI-like strings: 14-digit payload + Luhn check digit."""
    x = np.asarray(payload14, dtype=np.int64)
    total = np.zeros(len(x), dtype=np.int64)
    y = x.copy()
    for pos in range(14, 0, -1):  # 1-indexed position from the left, rightmost first
        d = y % 10
        y //= 10
        if pos % 2 == 0:
            d = d * 2
            d = d // 10 + d % 10
        total += d
    check = (10 - total % 10) % 10
    return _cat(x.astype(str), check)


def _bilinear(nw, ne, se, sw, u, v):
    """Point at cell coordinates (u west→east, v north→south), each in [0, 1]."""
    u = u[..., None]
    v = v[..., None]
    return (1 - u) * (1 - v) * nw + u * (1 - v) * ne + u * v * se + (1 - u) * v * sw


def _occupancy(capacity: np.ndarray, target: int) -> float:
    """Share p of dwellings registered so that E[sum(max(1, Binomial(c, p)))] ≈ target."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        p = (lo + hi) / 2
        expected = (capacity * p + (1 - p) ** capacity).sum()
        lo, hi = (p, hi) if expected < target else (lo, p)
    return (lo + hi) / 2


def _community_names(rng: np.random.Generator, n: int) -> np.ndarray:
    pairs = [(a, b) for a in _COMMUNITY_FIRST for b in _COMMUNITY_SECOND if a != b]
    chosen = rng.choice(len(pairs), size=n, replace=False)
    suffix = rng.choice(_COMMUNITY_SUFFIX, size=n)
    return np.array([pairs[i][0] + pairs[i][1] + s for i, s in zip(chosen, suffix)])


# --- the generator -------------------------------------------------------------------------------
def generate(size: str = "demo", seed: int = 1) -> CityData:
    """Build the synthetic city ``size`` ("small", "demo" or "large") from ``seed``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    lay = SIZES[size]
    streams = np.random.SeedSequence([seed, list(SIZES).index(size)]).spawn(6)
    rng_geo, rng_bld, rng_hh, rng_per, rng_fac, rng_wrk = (np.random.default_rng(s)
                                                            for s in streams)
    to_wgs = Transformer.from_crs(METRIC_SRID, 4326, always_xy=True)
    to_metric = Transformer.from_crs(4326, METRIC_SRID, always_xy=True)

    # ---- lattice ---------------------------------------------------------------------------
    nx, ny = lay.nx, lay.ny
    cx, cy = to_metric.transform(*CENTER_LONLAT)
    x0 = round(cx - nx * CELL_M / 2)
    ytop = round(cy + ny * CELL_M / 2)
    ii, rr = np.meshgrid(np.arange(nx + 1), np.arange(ny + 1))  # (ny+1, nx+1)
    jx = rng_geo.uniform(-JITTER, JITTER, ii.shape) * CELL_M
    jy = rng_geo.uniform(-JITTER, JITTER, ii.shape) * CELL_M
    jx[:, [0, nx]] = 0.0  # west/east edges stay straight: move only along them
    jy[[0, ny], :] = 0.0  # north/south edges likewise
    nodes = np.stack([x0 + ii * CELL_M + jx, ytop - rr * CELL_M + jy], axis=-1)

    # Cells in code order: street, community, unit — each row-major (north→south, west→east).
    (SX, SY), (CX, CY), (UX, UY) = lay.streets, lay.communities, lay.units
    s_idx, c_idx, u_idx = np.meshgrid(np.arange(SX * SY), np.arange(CX * CY),
                                      np.arange(UX * UY), indexing="ij")
    s_idx, c_idx, u_idx = s_idx.ravel(), c_idx.ravel(), u_idx.ravel()
    col = (s_idx % SX) * CX * UX + (c_idx % CX) * UX + u_idx % UX
    row = (s_idx // SX) * CY * UY + (c_idx // CX) * UY + u_idx // UX
    n_streets, n_comm_per, n_units = SX * SY, CX * CY, len(col)
    comm_of_unit = s_idx * n_comm_per + c_idx  # global community index, in code order

    nw, ne = nodes[row, col], nodes[row, col + 1]
    se, sw = nodes[row + 1, col + 1], nodes[row + 1, col]
    ring = np.stack([sw, se, ne, nw, sw], axis=1)  # counter-clockwise
    unit_metric = shapely.polygons(ring)

    def wgs(geoms):
        return shapely.transform(
            geoms, lambda xy: np.column_stack(to_wgs.transform(xy[:, 0], xy[:, 1])))

    unit_geom = wgs(unit_metric)

    # ---- codes and names -------------------------------------------------------------------
    street_no = np.arange(n_streets) + 1
    street_code = _cat(COUNTY_CODE, _zfill(street_no, 3), "00000")
    names_pool = STREET_NAMES[:] if n_streets <= len(STREET_NAMES) else (
        STREET_NAMES + [f"第{i}" for i in range(len(STREET_NAMES) + 1, n_streets + 1)])
    street_short = np.array(names_pool)[rng_geo.permutation(len(names_pool))[:n_streets]]
    street_name = _cat(street_short, "街道")

    n_comm = n_streets * n_comm_per
    comm_street = np.repeat(np.arange(n_streets), n_comm_per)
    comm_no = np.tile(np.arange(n_comm_per) + 1, n_streets)
    comm_code = _cat(COUNTY_CODE, _zfill(comm_street + 1, 3), _zfill(comm_no, 3), "00")
    comm_short = _community_names(rng_geo, n_comm)
    comm_name = _cat(comm_short, "社区")
    comm_lowrise = rng_geo.random(n_comm) < 0.2  # 平房/低层 communities
    comm_density = rng_geo.uniform(0.6, 1.4, n_comm)

    unit_code = _cat(COUNTY_CODE, _zfill(s_idx + 1, 3), _zfill(c_idx + 1, 3),
                     _zfill(u_idx + 1, 2))
    unit_name = _cat(comm_name[comm_of_unit], "第", _zfill(u_idx + 1, 2), "网格")

    comm_geom = np.array([shapely.coverage_union_all(unit_geom[comm_of_unit == k])
                          for k in range(n_comm)], dtype=object)
    street_geom = np.array([shapely.coverage_union_all(comm_geom[comm_street == s])
                            for s in range(n_streets)], dtype=object)
    district_geom = shapely.coverage_union_all(street_geom)
    district_code = COUNTY_CODE + "00000000"
    target = int(round(lay.households / n_units))

    grids = gpd.GeoDataFrame({
        "code": np.concatenate([[district_code], street_code, comm_code, unit_code]),
        "name": np.concatenate([[DISTRICT_NAME], street_name, comm_name, unit_name]),
        "level": ["district"] + ["street"] * n_streets + ["community"] * n_comm
        + ["unit"] * n_units,
        "parent_code": np.concatenate([[None], [district_code] * n_streets,
                                       street_code[comm_street], comm_code[comm_of_unit]]),
        "target_households": pd.array([pd.NA] * (1 + n_streets + n_comm) + [target] * n_units,
                                      dtype="Int64"),
    }, geometry=shapely.orient_polygons(np.concatenate(
        [[district_geom], street_geom, comm_geom, unit_geom])), crs="EPSG:4326")
    for c in ("code", "name", "level", "parent_code"):
        grids[c] = _str_series(grids[c].to_numpy(), grids.index)
    grids = grids[GRID_COLUMNS + ["target_households"]]

    # ---- buildings -------------------------------------------------------------------------
    weights = comm_density[comm_of_unit] * rng_bld.uniform(0.8, 1.2, n_units)
    per_cell = rng_bld.multinomial(lay.buildings, weights / weights.sum())
    m = np.ceil(np.sqrt(np.maximum(per_cell, 1) * 1.25)).astype(np.int64)  # slots per side
    m_max = int(m.max())
    keys = rng_bld.random((n_units, m_max * m_max))
    slot = np.arange(m_max * m_max)
    keys[slot[None, :] >= (m * m)[:, None]] = np.inf  # only the cell's own m x m slots
    order = np.argsort(keys, axis=1)
    take = slot[None, :] < per_cell[:, None]
    b_cell = np.repeat(np.arange(n_units), per_cell)  # cells in code order
    b_slot = np.sort(np.where(take, order, m_max * m_max), axis=1)[take]  # row-major slots
    b_m = m[b_cell]
    su, sv = b_slot % b_m, b_slot // b_m
    nb = len(b_cell)
    wf = rng_bld.uniform(0.45, 0.76, nb)  # footprint as a share of the slot
    hf = rng_bld.uniform(0.40, 0.76, nb)
    u0 = (su + 0.12 + rng_bld.random(nb) * (0.76 - wf)) / b_m
    v0 = (sv + 0.12 + rng_bld.random(nb) * (0.76 - hf)) / b_m
    u1, v1 = u0 + wf / b_m, v0 + hf / b_m
    cn = [a[b_cell] for a in (nw, ne, se, sw)]
    corners = np.stack([_bilinear(*cn, uu, vv) for uu, vv in
                        ((u0, v1), (u1, v1), (u1, v0), (u0, v0), (u0, v1))], axis=1)
    b_geom = wgs(shapely.polygons(corners))

    b_comm = comm_of_unit[b_cell]
    b_no = group_rank(b_comm) + 1
    b_name = _cat(b_no, "号楼")
    b_prefix = _cat(DISTRICT_NAME, street_name[comm_street[b_comm]], comm_name[b_comm])
    b_use = _pick(rng_bld, BUILDING_USES, BUILDING_USE_P, nb)
    band = rng_bld.choice(5, size=nb, p=[0.10, 0.63, 0.15, 0.09, 0.03])
    lo = np.array([1, 3, 7, 13, 19])[band]
    hi = np.array([2, 6, 12, 18, 30])[band]
    floors = rng_bld.integers(lo, hi + 1)
    low = comm_lowrise[b_comm]
    floors = np.where(low, rng_bld.choice([1, 2, 3, 4, 5, 6], size=nb,
                                          p=[0.4, 0.3, 0.15, 0.05, 0.05, 0.05]), floors)
    floors = np.where(b_use == "school", rng_bld.integers(2, 6, nb), floors)
    floors = np.where(b_use == "public", rng_bld.integers(1, 5, nb), floors)
    floors = np.where(b_use == "commercial", np.minimum(floors, rng_bld.integers(1, 9, nb)),
                      floors)
    buildings = gpd.GeoDataFrame({
        "id": np.arange(1, nb + 1, dtype=np.int64),
        "name": _str_series(b_name),
        "address": _str_series(_cat(b_prefix, b_name)),
        "floors": floors.astype(np.int64),
        "use": _str_series(b_use),
        "osm_id": pd.array([pd.NA] * nb, dtype="Int64"),
        "grid_code": _str_series(unit_code[b_cell]),
    }, geometry=b_geom, crs="EPSG:4326")[BUILDING_COLUMNS + ["grid_code"]]

    # ---- households ------------------------------------------------------------------------
    housing = np.isin(b_use, ["residential", "mixed"])
    res_floors = np.where(b_use == "mixed", np.maximum(floors - 1, 1), floors)
    stairs = rng_bld.choice([1, 2, 3], size=nb, p=[0.7, 0.25, 0.05])  # 单元
    per_stair = rng_bld.choice([1, 2], size=nb)  # dwellings per floor per 单元
    capacity = np.where(housing, res_floors * stairs * per_stair, 0)
    occupancy = _occupancy(capacity[housing], lay.households)
    hh_count = np.where(housing, np.maximum(1, rng_hh.binomial(capacity, occupancy)), 0)
    nh = int(hh_count.sum())
    h_b = np.repeat(np.arange(nb), hh_count)
    k = np.arange(nh) - np.repeat(np.cumsum(hh_count) - hh_count, hh_count)
    # Spread the k-th of h households evenly over the building's dwellings (unique rooms).
    dwelling = (k * capacity[h_b]) // hh_count[h_b]
    per_stair_all = res_floors[h_b] * per_stair[h_b]
    stair_no = dwelling // per_stair_all + 1
    within = dwelling % per_stair_all
    floor_no = within // per_stair[h_b] + 1 + (b_use[h_b] == "mixed")  # shops on floor 1
    room_no = within % per_stair[h_b] + 1
    hh_size = rng_hh.choice(np.arange(1, 7), size=nh, p=[0.18, 0.30, 0.27, 0.14, 0.07, 0.04])
    rental = rng_hh.random(nh) < np.where(low[h_b], 0.14, 0.09)

    # ---- persons ---------------------------------------------------------------------------
    npers = int(hh_size.sum())
    p_h = np.repeat(np.arange(nh), hh_size)
    member = np.arange(npers) - np.repeat(np.cumsum(hh_size) - hh_size, hh_size)
    r = rng_per.random(npers)
    rel = np.where(member == 0, 0,
          np.where(member == 1, np.where(r < 0.85, 1, 2),
                   np.searchsorted(np.cumsum([0.72, 0.18, 0.06, 0.04]), r * 0.9999) + 2))
    head_male = rng_per.random(nh) < 0.62
    head_age = np.clip(rng_per.normal(50, 15, nh), 20, 92).astype(np.int64)
    head_age = np.where((hh_size == 1) & (rng_per.random(nh) < 0.35),
                        rng_per.integers(65, 93, nh), head_age)  # many live alone when old
    ha = head_age[p_h]
    age = np.select(
        [rel == 0, rel == 1, rel == 2, rel == 3, rel == 4],
        [ha, np.maximum(ha + np.rint(rng_per.normal(-1, 3, npers)).astype(np.int64), 20),
         np.maximum(ha - rng_per.integers(22, 37, npers), 0),
         np.minimum(ha + rng_per.integers(22, 34, npers), 100),
         np.maximum(ha - rng_per.integers(44, 63, npers), 0)],
        np.maximum(ha + rng_per.integers(-8, 9, npers), 18))
    male = np.select([rel == 0, rel == 1], [head_male[p_h], ~head_male[p_h]],
                     rng_per.random(npers) < 0.5)
    family = _pick(rng_per, SURNAMES, SURNAME_P, nh)[p_h]
    own = _pick(rng_per, SURNAMES, SURNAME_P, npers)
    surname = np.where((rel == 1) | ((rel == 3) & (rng_per.random(npers) < 0.5)), own, family)
    name = _random_names(rng_per, male, surname)

    # Categories: rental households are mostly floating; special groups among residents.
    floating_hh = np.where(rental, rng_per.random(nh) < 0.75, rng_per.random(nh) < 0.01)
    floating = floating_hh[p_h]
    alone_old = (hh_size[p_h] == 1) & (age >= 65) & (rng_per.random(npers) < 0.8)
    empty_nest = (hh_size[p_h] == 2) & (age >= 65) & (rng_per.random(npers) < 0.15)
    other_special = rng_per.random(npers) < 0.012
    special = ~floating & (alone_old | empty_nest | other_special)
    group = np.where(alone_old, 0, np.where(empty_nest, 1,
                     np.where(rng_per.random(npers) < 0.55, 2, 3)))
    category = np.where(floating, "floating", np.where(special, "special", "registered"))
    special_group = np.where(special, SPECIAL_GROUPS[group], None)

    # Birth dates and GB 11643-1999 ID numbers (unique; gender = parity of the 17th digit).
    birth = (REFERENCE_DATE - (age * 365.25).astype(np.int64)
             - rng_per.integers(0, 365, npers)).astype("datetime64[D]")
    y = birth.astype("datetime64[Y]")
    mo = birth.astype("datetime64[M]")
    ymd = ((y.astype(np.int64) + 1970) * 10000 + (mo - y).astype(np.int64) * 100 + 100
           + (birth - mo).astype(np.int64) + 1)
    region = np.where(floating, OTHER_REGIONS[rng_per.integers(0, len(OTHER_REGIONS), npers)],
                      np.where(rng_per.random(npers) < 0.85, int(COUNTY_CODE),
                               BEIJING_REGIONS[rng_per.integers(0, len(BEIJING_REGIONS),
                                                                npers)]))
    key = region * 10**7 + (birth.astype(np.int64) + 50_000) * 2 + male
    rank = group_rank(key)
    if rank.max() >= 500:
        raise RuntimeError("too many persons share region, birth date and gender")
    offset = ((key % 1_000_003) * 7_919 + seed) % 500  # per-group scramble, deterministic
    seq = ((offset + rank * 37) % 500) * 2 + male
    first17 = region * 10**11 + ymd * 1000 + seq
    id_number = _cat(first17.astype(str), id_check_digit(first17))
    phone = np.where(age >= 12, _phones(rng_per, npers), None)

    head_name = name[member == 0]
    households = pd.DataFrame({
        "id": np.arange(1, nh + 1, dtype=np.int64),
        "building_id": (h_b + 1).astype(np.int64),
        "unit": _str_series(_cat(stair_no, "单元")),
        "room": _str_series((floor_no * 100 + room_no).astype(str)),
        "head_name": _str_series(head_name),
        "size": hh_size.astype(np.int64),
        "is_rental": rental,
    })[HOUSEHOLD_COLUMNS]
    persons = pd.DataFrame({
        "household_id": (p_h + 1).astype(np.int64),
        "name": _str_series(name),
        "id_number": _str_series(id_number),
        "phone": _str_series(phone),
        "gender": _str_series(np.where(male, "M", "F")),
        "birth_date": birth.astype("datetime64[s]"),
        "category": _str_series(category),
        "relation": _str_series(RELATIONS[rel]),
        "special_group": _str_series(special_group),
    })[PERSON_COLUMNS]

    # ---- facilities ------------------------------------------------------------------------
    kinds = list(FACILITY_KINDS)
    rates = np.array([FACILITY_KINDS[kd][1] for kd in kinds])
    counts = rng_fac.poisson(rates[None, :], (n_units, len(kinds)))
    for j in np.flatnonzero(counts.sum(axis=0) == 0):  # every kind at least once
        counts[rng_fac.integers(0, n_units), j] = 1
    f_cell = np.repeat(np.repeat(np.arange(n_units), len(kinds)), counts.ravel())
    f_kind = np.repeat(np.tile(np.arange(len(kinds)), n_units), counts.ravel())
    nf = len(f_cell)
    fu, fv = rng_fac.uniform(0.04, 0.96, nf), rng_fac.uniform(0.04, 0.96, nf)
    f_xy = _bilinear(*[a[f_cell] for a in (nw, ne, se, sw)], fu, fv)
    f_geom = wgs(shapely.points(f_xy))
    f_comm = comm_of_unit[f_cell]
    f_no = group_rank(f_comm * len(kinds) + f_kind) + 1
    labels = np.array([FACILITY_KINDS[kd][0] for kd in kinds])
    f_name = np.where(f_kind == kinds.index("fire_hydrant"),
                      _cat(comm_short[f_comm], "消火栓", _zfill(f_no, 2), "号"),
                      _cat(comm_short[f_comm], labels[f_kind],
                           np.where(f_no > 1, _cat("（", f_no, "）"), "")))
    facilities = gpd.GeoDataFrame({
        "kind": _str_series(np.array(kinds)[f_kind]),
        "name": _str_series(f_name),
        "address": _str_series(_cat(DISTRICT_NAME, street_name[comm_street[f_comm]],
                                    comm_name[f_comm])),
        "is_key_place": np.array([FACILITY_KINDS[kd][2] for kd in kinds])[f_kind],
        "osm_id": pd.array([pd.NA] * nf, dtype="Int64"),
        "grid_code": _str_series(unit_code[f_cell]),
    }, geometry=f_geom, crs="EPSG:4326")[FACILITY_COLUMNS + ["grid_code"]]

    # ---- departments -----------------------------------------------------------------------
    office_code = _cat("street_", street_code.astype("U9"))
    departments = pd.DataFrame({
        "code": [c for c, _ in DEPARTMENTS] + list(office_code),
        "name": [nm for _, nm in DEPARTMENTS] + list(_cat(street_name, "办事处")),
        "grid_code": [district_code] * len(DEPARTMENTS) + list(street_code),
        "phone": list(_cat("010-6", _zfill(rng_wrk.integers(0, 10**7, len(DEPARTMENTS)
                                                            + n_streets), 7))),
    }, dtype="str")[DEPARTMENT_COLUMNS]

    # ---- workers ---------------------------------------------------------------------------
    vol = rng_wrk.integers(lay.volunteers[0], lay.volunteers[1] + 1, n_units)
    per_unit = 1 + vol
    # Layout per community: its 5 staff, then for each of its units: grid_admin + volunteers.
    units_of_comm = np.bincount(comm_of_unit, minlength=n_comm)
    staff_per_comm = len(COMMUNITY_ROLES) + np.bincount(comm_of_unit, weights=per_unit,
                                                         minlength=n_comm).astype(np.int64)
    nw_total = int(staff_per_comm.sum())
    w_comm = np.repeat(np.arange(n_comm), staff_per_comm)
    w_k = np.arange(nw_total) - np.repeat(np.cumsum(staff_per_comm) - staff_per_comm,
                                          staff_per_comm)
    is_staff = w_k < len(COMMUNITY_ROLES)
    roles = np.empty(nw_total, dtype=object)
    roles[is_staff] = np.array(COMMUNITY_ROLES)[w_k[is_staff]]
    unit_roles = np.concatenate([["grid_admin"] + ["volunteer"] * v for v in vol])
    unit_of_worker = np.repeat(np.arange(n_units), per_unit)
    roles[~is_staff] = unit_roles
    roles = roles.astype(str)
    w_unit = np.full(nw_total, -1)
    w_unit[~is_staff] = unit_of_worker
    w_street = comm_street[w_comm]
    dept = office_code[w_street].astype(object)
    dept[roles == "police"] = "police"
    dept[roles == "firefighter"] = "fire"
    dept[roles == "volunteer"] = None
    w_male = rng_wrk.random(nw_total) < 0.55
    w_ids = np.arange(1, nw_total + 1, dtype=np.int64)
    device = _imei(86_0000 * 10**8 + (w_ids * 7_368_787 + int(rng_wrk.integers(0, 10**8)))
                   % 10**8)
    workers = pd.DataFrame({
        "id": w_ids,
        "name": _str_series(_random_names(rng_wrk, w_male)),
        "role": _str_series(roles),
        "phone": _str_series(_phones(rng_wrk, nw_total, unique_from=w_ids)),
        "device_id": _str_series(device),
        "department_code": _str_series(dept),
    })[WORKER_COLUMNS]

    # Assignments by unit grid code: own unit for grid admins / volunteers, every unit of the
    # community for community staff.
    first_unit = np.cumsum(units_of_comm) - units_of_comm  # units are grouped by community
    staff_ids = w_ids[is_staff]
    staff_comm = w_comm[is_staff]
    n_rep = units_of_comm[staff_comm]
    staff_units = (np.repeat(first_unit[staff_comm], n_rep)
                   + np.arange(n_rep.sum()) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep))
    wg_worker = np.concatenate([np.repeat(staff_ids, n_rep), w_ids[~is_staff]])
    wg_unit = np.concatenate([staff_units, w_unit[~is_staff]])
    wg_resp = np.concatenate([np.zeros(len(staff_units), bool), roles[~is_staff] == "grid_admin"])
    o = np.lexsort((wg_unit, wg_worker))
    worker_grids = pd.DataFrame({
        "worker_id": wg_worker[o], "grid_code": _str_series(unit_code[wg_unit[o]]),
        "is_responsible": wg_resp[o]})[WORKER_GRID_COLUMNS]

    return CityData(
        name=f"{DISTRICT_NAME}（合成 {size}）", county_code=COUNTY_CODE, metric_srid=METRIC_SRID,
        source=f"synthetic:{size}:seed={seed}", grids=grids, buildings=buildings,
        households=households, persons=persons, facilities=facilities,
        departments=departments, workers=workers, worker_grids=worker_grids,
        extra={"size": size, "seed": seed, "layout": lay, "cell_m": CELL_M,
               "occupancy": occupancy, "reference_date": str(REFERENCE_DATE)},
    )

"""Grid codes for new grids (BRIEF: CJ/T 213 style).

unit      = community code[:12] + 2-digit sequence (3 digits when the community already uses
            15-digit codes, Beijing DB11/T 2157)
community = street code[:9] + 3-digit sequence + "00"
street    = county code[:6] + 3-digit sequence + "00000"

New grids are numbered west→east, north→south inside their parent: rows are bands of the
typical grid height (north first), west→east within a row. Kept grids keep their codes; a code
that any grid ever had (every generation, ``grids`` keeps history) or that a publish retired
(``retired_codes``) is never handed out again.
"""
from __future__ import annotations

import numpy as np
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError


def _layout(level: str, parent_code: str, width: int | None = None) -> tuple[str, int, str]:
    """(prefix, sequence digits, suffix) of codes of ``level`` under ``parent_code``."""
    if level == "unit":
        return parent_code[:12], width or 2, ""
    if level == "community":
        return parent_code[:9], 3, "00"
    if level == "street":
        return parent_code[:6], 3, "00000"
    raise ValueError(f"no codes are assigned for level {level!r}")


def used_codes(conn: Connection, prefix: str, extra=()) -> set[str]:
    """Every code under ``prefix`` ever used (all generations), retired or held by a plan."""
    rows = conn.execute(text("""
        SELECT code FROM grids WHERE starts_with(code, :p)
        UNION SELECT code FROM retired_codes WHERE starts_with(code, :p)
    """), {"p": prefix}).scalars().all()
    return set(rows) | {c for c in extra if c and c.startswith(prefix)}


def spatial_order(metric_geoms) -> np.ndarray:
    """Indices in reading order: north→south rows, west→east inside a row."""
    geoms = np.asarray(metric_geoms, dtype=object)
    if len(geoms) == 0:
        return np.zeros(0, dtype=int)
    pts = shapely.point_on_surface(geoms)
    x, y = shapely.get_x(pts), shapely.get_y(pts)
    band = float(np.sqrt(np.median(shapely.area(geoms)))) or 1.0
    row = np.floor((y.max() - y) / band + 0.5)
    return np.lexsort((x, row))


def next_codes(level: str, parent_code: str, n: int, used: set[str],
               width: int | None = None) -> list[str]:
    prefix, digits, suffix = _layout(level, parent_code, width)
    out = []
    seq = 1
    limit = 10 ** digits - 1
    while len(out) < n:
        if seq > limit:
            raise APIError(409, "codes_exhausted",
                           f"no free {level} code left under {parent_code} "
                           f"({digits}-digit sequence)", field="parent_code")
        code = f"{prefix}{seq:0{digits}d}{suffix}"
        if code not in used:
            out.append(code)
        seq += 1
    return out


def assign(conn: Connection, level: str, parent_code: str, metric_geoms,
           extra_used=()) -> list[str]:
    """Codes for new grids (index-aligned with ``metric_geoms``) in reading order."""
    prefix, _, _ = _layout(level, parent_code)
    used = used_codes(conn, prefix, extra_used)
    width = None
    if level == "unit" and any(len(c) == 15 for c in used):  # Beijing's 3-digit sequence
        width = 3
    order = spatial_order(metric_geoms)
    fresh = next_codes(level, parent_code, len(order), used, width)
    codes = [""] * len(order)
    for rank, idx in enumerate(order):
        codes[int(idx)] = fresh[rank]
    return codes

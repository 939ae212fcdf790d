"""Parsing of user-supplied values; every failure names the field (HTTP 400)."""
from __future__ import annotations

import math
from datetime import datetime, timezone

from ..errors import bad_param  # noqa: F401 (re-exported for views)
from ..models import GRID_LEVELS


def number(value, field: str, lo: float | None = None, hi: float | None = None) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        raise bad_param(field, f"{field} is required")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise bad_param(field, f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise bad_param(field, f"{field} must be a finite number")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise bad_param(field, f"{field} must be between {lo} and {hi}, got {x}")
    return x


def lon_lat(lon, lat) -> tuple[float, float]:
    return number(lon, "lon", -180, 180), number(lat, "lat", -90, 90)


def integer(value, field: str, lo: int | None = None, hi: int | None = None,
            default: int | None = None) -> int:
    if value is None or value == "":
        if default is not None:
            return default
        raise bad_param(field, f"{field} is required")
    try:
        x = int(value)
    except (TypeError, ValueError):
        raise bad_param(field, f"{field} must be an integer, got {value!r}") from None
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise bad_param(field, f"{field} must be between {lo} and {hi}, got {x}")
    return x


def bbox(value, field: str = "bbox") -> tuple[float, float, float, float]:
    if not value:
        raise bad_param(field, f"{field} is required as minlon,minlat,maxlon,maxlat")
    parts = str(value).split(",")
    if len(parts) != 4:
        raise bad_param(field, f"{field} must have 4 comma-separated numbers "
                               "(minlon,minlat,maxlon,maxlat)")
    minx, miny, maxx, maxy = (number(p, field) for p in parts)
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90
            and -90 <= maxy <= 90):
        raise bad_param(field, f"{field} is outside longitude/latitude ranges")
    if minx > maxx or miny > maxy:
        raise bad_param(field, f"{field} minimums must not exceed maximums")
    return minx, miny, maxx, maxy


def level(value, field: str = "level", required: bool = False) -> str | None:
    if value in (None, ""):
        if required:
            raise bad_param(field, f"{field} is required: one of {', '.join(GRID_LEVELS)}")
        return None
    if value not in GRID_LEVELS:
        raise bad_param(field, f"{field} must be one of {', '.join(GRID_LEVELS)}, got {value!r}")
    return value


def grid_code(value, field: str = "code", required: bool = False) -> str | None:
    if value in (None, ""):
        if required:
            raise bad_param(field, f"{field} is required")
        return None
    if not (isinstance(value, str) and value.isdigit() and len(value) in (14, 15)):
        raise bad_param(field, f"{field} must be a 14- or 15-digit grid code, got {value!r}")
    return value


def timestamp(value, field: str = "at") -> datetime | None:
    """ISO 8601 (``2026-03-01``, ``2026-03-01T08:00:00+08:00``) or epoch seconds; UTC if naive."""
    if value in (None, ""):
        return None
    text_value = str(value).strip()
    try:
        if text_value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text_value), tz=timezone.utc)
        parsed = datetime.fromisoformat(text_value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise bad_param(field, f"{field} must be an ISO 8601 timestamp or epoch seconds, "
                               f"got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def paging(args, max_limit: int, default_limit: int = 1000) -> tuple[int, int]:
    """``limit`` (1..max_limit) and ``offset`` (≥ 0) from request arguments."""
    return (integer(args.get("limit"), "limit", 1, max_limit, default=default_limit),
            integer(args.get("offset"), "offset", 0, default=0))

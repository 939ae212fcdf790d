from __future__ import annotations

from flask import Blueprint, request

from ..core import params
from ..core.grids import get_grid, list_grids
from ..db import get_db
from . import geojson

bp = Blueprint("grids", __name__)


@bp.get("/api/v1/grids")
def grids_index():
    level = params.level(request.args.get("level"))
    parent = params.grid_code(request.args.get("parent"), "parent")
    at = params.timestamp(request.args.get("at"), "at")
    stats = request.args.get("stats", "false").lower() in ("1", "true", "yes")
    return geojson(list_grids(get_db(), level=level, parent=parent, at=at, with_stats=stats))


@bp.get("/api/v1/grids/<code>")
def grid_detail(code: str):
    params.grid_code(code, "code", required=True)
    at = params.timestamp(request.args.get("at"), "at")
    return geojson(get_grid(get_db(), code, at=at))

from __future__ import annotations

from flask import Blueprint, request

from ..core import params
from ..access import personal_data_mode
from ..core.grids import get_grid, list_grids, without_worker_contacts
from ..db import get_db
from . import geojson

bp = Blueprint("grids", __name__)


@bp.get("/api/v1/grids")
def grids_index():
    level = params.level(request.args.get("level"))
    parent = params.grid_code(request.args.get("parent"), "parent")
    at = params.timestamp(request.args.get("at"), "at")
    stats = request.args.get("stats", "false").lower() in ("1", "true", "yes")
    fc = list_grids(get_db(), level=level, parent=parent, at=at, with_stats=stats)
    return geojson(without_worker_contacts(fc) if personal_data_mode() == "removed" else fc)


@bp.get("/api/v1/grids/<code>")
def grid_detail(code: str):
    params.grid_code(code, "code", required=True)
    at = params.timestamp(request.args.get("at"), "at")
    feature = get_grid(get_db(), code, at=at)
    if personal_data_mode() == "removed":
        without_worker_contacts(feature)
    return geojson(feature)

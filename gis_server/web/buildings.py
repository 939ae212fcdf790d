from __future__ import annotations

from flask import Blueprint, request

from ..core import params
from ..core.buildings import MAX_BBOX_FEATURES, buildings_in_bbox, get_building
from ..db import get_db
from . import geojson

bp = Blueprint("buildings", __name__)


@bp.get("/api/v1/buildings")
def buildings_index():
    box = params.bbox(request.args.get("bbox"))
    limit = params.integer(request.args.get("limit"), "limit", 1, MAX_BBOX_FEATURES, default=1000)
    offset = params.integer(request.args.get("offset"), "offset", 0, default=0)
    return geojson(buildings_in_bbox(get_db(), box, limit=limit, offset=offset))


@bp.get("/api/v1/buildings/<building_id>")
def building_detail(building_id: str):
    bid = params.integer(building_id, "id", 1, 2**62)
    # Personal data stays masked until access control grants a role the right to see it.
    return geojson(get_building(get_db(), bid, unmasked=False))

from __future__ import annotations

from flask import Blueprint, request

from ..access import audit_personal_read, personal_data_mode

from ..core import params
from ..core.buildings import MAX_BBOX_FEATURES, buildings_in_bbox, get_building
from ..db import get_db
from . import geojson

bp = Blueprint("buildings", __name__)


@bp.get("/api/v1/buildings")
def buildings_index():
    box = params.bbox(request.args.get("bbox"))
    limit, offset = params.paging(request.args, MAX_BBOX_FEATURES)
    return geojson(buildings_in_bbox(get_db(), box, limit=limit, offset=offset))


@bp.get("/api/v1/buildings/<building_id>")
def building_detail(building_id: str):
    bid = params.integer(building_id, "id", 1, 2**62)
    mode = personal_data_mode()
    feature = get_building(get_db(), bid, mode=mode)
    if mode == "unmasked":
        households = feature["properties"]["households"]
        audit_personal_read("building", bid,
                            {"households": len(households),
                             "persons": sum(len(h["members"]) for h in households)})
    return geojson(feature)

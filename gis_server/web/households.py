from __future__ import annotations

from flask import Blueprint, request

from ..access import audit_personal_read, personal_data_mode
from ..core import params
from ..core.accounts import scope_prefix
from ..core.households import MAX_HOUSEHOLDS, get_household, list_households
from ..db import get_db

bp = Blueprint("households", __name__)


@bp.get("/api/v1/households")
def households_index():
    grid = params.grid_code(request.args.get("grid"), "grid")
    box = params.bbox(request.args.get("bbox")) if request.args.get("bbox") else None
    if grid is None and box is None:
        raise params.bad_param("grid", "give grid=CODE and/or bbox=minlon,minlat,maxlon,maxlat")
    limit, offset = params.paging(request.args, MAX_HOUSEHOLDS)
    mode = personal_data_mode()
    result = list_households(get_db(), grid_prefix=scope_prefix(grid), bbox=box, mode=mode,
                             limit=limit, offset=offset)
    if mode == "unmasked" and result["households"]:
        audit_personal_read("households",
                            ",".join(str(h["id"]) for h in result["households"][:50]),
                            {"count": result["numberReturned"], "grid": grid, "bbox": box})
    return result


@bp.get("/api/v1/households/<household_id>")
def household_detail(household_id: str):
    hid = params.integer(household_id, "id", 1, 2**62)
    mode = personal_data_mode()
    household = get_household(get_db(), hid, mode=mode)
    if mode == "unmasked":
        audit_personal_read("household", hid, {"members": len(household["members"])})
    return household

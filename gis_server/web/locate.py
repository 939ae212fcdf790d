from __future__ import annotations

from flask import Blueprint, current_app, request

from ..core import params
from ..core.locate import locate_sql
from ..db import get_db, get_engine

bp = Blueprint("locate", __name__)


@bp.get("/api/v1/locate")
def locate():
    """The unit grid, community, street and district containing lon/lat, and its workers."""
    lon, lat = params.lon_lat(request.args.get("lon"), request.args.get("lat"))
    at = params.timestamp(request.args.get("at"), "at")
    if at is not None:
        return locate_sql(get_db(), lon, lat, at)
    return current_app.extensions["grid_index"].get(get_engine()).locate(lon, lat)

"""Map pages (HTML): fetch the data, let ``core.maps`` build the folium page."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..core import params
from ..access import personal_data_mode
from ..core.grids import list_grids, without_worker_contacts
from ..core.maps import OUTLINE_LEVELS, grid_map, message_page
from ..db import get_db
from ..errors import bad_param, not_found

bp = Blueprint("maps", __name__)


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/html")


def _community_param(value: str | None) -> str | None:
    code = params.grid_code(value, "community")
    if code is not None and not code.endswith("00"):
        raise bad_param("community", "community must be a community grid code (ending in 00), "
                                     f"got {code!r}")
    return code


@bp.get("/maps/grids")
def grids_map():
    """The grid hierarchy: unit grids coloured by community, higher levels as outlines.

    ``?community=CODE`` shows only that community's unit grids.
    """
    community = _community_param(request.args.get("community"))
    conn = get_db()
    outlines = {level: list_grids(conn, level=level) for level in OUTLINE_LEVELS}
    units = list_grids(conn, level="unit", parent=community, with_stats=True)
    if personal_data_mode() == "removed":
        units = without_worker_contacts(units)
    if not units["features"] and not any(fc["features"] for fc in outlines.values()):
        return _html(message_page("网格地图 Grid map",
                                  "No grids are loaded yet (尚未加载网格数据): load a city "
                                  "first, e.g. `gis-server load synthetic`."))
    if community and not any(f["properties"]["code"] == community
                             for f in outlines["community"]["features"]):
        raise not_found("community", community)
    return _html(grid_map(units, outlines, community=community,
                          basemap_url=current_app.config.get("BASEMAP_URL"),
                          attribution=current_app.config.get("BASEMAP_ATTRIBUTION") or ""))

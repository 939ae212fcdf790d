"""``/maps/incidents``: the incidents map (HTML). Filters: ``category`` (comma list),
``from``/``to`` (dates or ISO timestamps, on the report time).

The blueprint is nested in the ``maps`` blueprint (endpoint ``maps.incidents.incidents_map``)
so that it shares the map pages' rules: anonymous browsers are sent to the login form.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, Response, current_app, request

from ..core import categories as cats
from ..core import params
from ..core.incidents_map import incidents_map, map_data
from ..db import get_db
from . import maps

bp = Blueprint("incidents", __name__)


@bp.get("/maps/incidents")
def incidents_map_page():
    args = request.args
    category = [c for c in args.get("category", "").split(",") if c] or None
    if category:
        unknown = [c for c in category if c not in cats.load()]
        if unknown:
            raise params.bad_param("category", f"unknown category {unknown[0]!r}")
    start = params.timestamp(args.get("from"), "from")
    end = params.timestamp(args.get("to"), "to")
    if start and end and end <= start:
        raise params.bad_param("to", "to must be after from")
    grids, rows = map_data(get_db(), datetime.now(timezone.utc), category, start, end)
    page = incidents_map(grids, rows, category=category,
                         start_text=args.get("from", "")[:10] or None,
                         end_text=args.get("to", "")[:10] or None,
                         basemap_url=current_app.config.get("BASEMAP_URL"),
                         attribution=current_app.config.get("BASEMAP_ATTRIBUTION") or "")
    return Response(page, mimetype="text/html")


# Nest once per process, before the maps blueprint is first registered on an app.
if not any(child is bp for child, _ in maps.bp._blueprints):
    maps.bp.register_blueprint(bp)

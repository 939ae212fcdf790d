"""The before/after map of a plan: ``/maps/plans/ID`` (see core.plan_maps).

The blueprint is nested in the ``maps`` blueprint (endpoint ``maps.plan_maps.plan_map_page``)
so that it shares the map pages' rules: anonymous browsers are sent to the login form.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..core import plans as core
from ..core.grids import list_grids
from ..core.plan_maps import plan_map
from ..db import get_db
from . import maps

bp = Blueprint("plan_maps", __name__)


@bp.get("/maps/plans/<int:plan_id>")
def plan_map_page(plan_id: int):
    conn = get_db()
    plan = core.get_plan(conn, plan_id)
    parents = core.affected_parents(conn, plan_id)
    after = core.plan_grids_fc(conn, plan_id)
    if parents:  # only the touched parents: before and after side by side
        after["features"] = [f for f in after["features"]
                             if f["properties"]["parent_code"] in parents]
    before = {"type": "FeatureCollection", "features": []}
    for parent in parents:
        before["features"] += list_grids(conn, level=plan["level"], parent=parent)["features"]
    problems = core.validate_plan(conn, plan_id)["problems"]
    html = plan_map(plan, before, after, problems,
                    basemap_url=current_app.config.get("BASEMAP_URL"),
                    attribution=current_app.config.get("BASEMAP_ATTRIBUTION") or "")
    return Response(html, mimetype="text/html")


# Nest once per process, before the maps blueprint is first registered on an app.
if not any(child is bp for child, _ in maps.bp._blueprints):
    maps.bp.register_blueprint(bp)

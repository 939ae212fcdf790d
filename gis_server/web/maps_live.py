"""The command-centre map: live worker positions for an organisation level.

A small page of our own (vendored Leaflet, canvas renderer for 10,000 markers, no CDN, no
tiles unless ``BASEMAP_URL``); the logic lives in ``static/js/command_center.js``, which reads
the live GeoJSON snapshot and the SSE stream (``/api/v1/stream``), the grids API for
boundaries and the level picker, and worker tracks for playback.
"""
from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy import bindparam, text

from .. import access
from ..assets import vendor_path
from ..core import params
from ..core import positions as core
from ..core.maps import WORKER_ROLE_LABELS, _escape
from ..db import get_db
from ..layers import get as get_layer

bp = Blueprint("maps_live", __name__)

OPEN_INCIDENT_EXCLUDED = ("closed", "cancelled", "rejected")


def open_incidents(conn, limit: int = 5000) -> dict:
    """Open incidents in the caller's scope as GeoJSON (read-only; owned by the incidents
    module: we only read the table when rows exist)."""
    rows = conn.execute(text("""
        SELECT id, category, status, reported_at, ST_X(geom) AS lon, ST_Y(geom) AS lat
        FROM incidents WHERE status NOT IN :excluded ORDER BY reported_at DESC LIMIT :limit
    """).bindparams(bindparam("excluded", expanding=True)),
        {"excluded": list(OPEN_INCIDENT_EXCLUDED), "limit": limit}).all()
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": r.id,
         "geometry": {"type": "Point", "coordinates": [r.lon, r.lat]},
         "properties": {"id": r.id, "category": r.category, "status": r.status,
                        "reported_at": r.reported_at.isoformat()}} for r in rows]}


PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>指挥中心 Command centre</title>
<link rel="stylesheet" href="{leaflet_css}">
<style>
html, body {{ height: 100%; margin: 0; font-family: sans-serif; }}
#bar {{ position: absolute; top: 0; left: 0; right: 0; height: 44px; z-index: 1000;
        background: #1f4e79; color: #fff; display: flex; align-items: center; gap: 10px;
        padding: 0 12px; font-size: 14px; }}
#bar select {{ font-size: 14px; }}
#map {{ position: absolute; top: 44px; bottom: 0; left: 0; right: 0; }}
#stats span {{ margin-right: 10px; }}
.legend {{ background: #fff; padding: 6px 8px; line-height: 1.5; font-size: 12px; }}
.legend i {{ display: inline-block; width: 10px; height: 10px; border-radius: 50%;
             margin-right: 4px; }}
.cc-popup th {{ text-align: left; padding-right: 6px; }}
</style></head>
<body>
<div id="bar"><strong>指挥中心 Command centre</strong>
  <label>Level <select id="level">
    <option value="street">街道 Street</option>
    <option value="community">社区 Community</option>
    <option value="unit">网格 Grid</option></select></label>
  <label>Scope <select id="scope"><option value="">— all in my scope —</option></select></label>
  <span id="stats"></span> <span id="conn"></span>
</div>
<div id="map"></div>
<script id="cc-config" type="application/json">{config}</script>
<script src="{leaflet_js}"></script>
<script src="{app_js}"></script>
</body></html>
"""


def _script_json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False).replace("</", "<\\/")


@bp.get("/maps/command-center")
def command_center():
    """Live map: pick a level and a grid, watch its workers move."""
    scope = params.grid_code(request.args.get("scope"), "scope")
    level = params.level(request.args.get("level"), "level") or "community"
    conn = get_db()
    core.check_scope(conn, scope)
    layer = get_layer("workers_live")
    config = {
        "scope": scope, "level": level if level != "district" else "street",
        "user": {"role": access.principal().role,
                 "personal_data": access.personal_data_mode()},
        "roles": WORKER_ROLE_LABELS,
        "style": layer.style, "labels": layer.labels,
        "offline_after_s": core.rules_from(current_app.config).offline_after_s,
        "basemap": {"url": current_app.config.get("BASEMAP_URL"),
                    "attribution": _escape(current_app.config.get("BASEMAP_ATTRIBUTION"))},
        "incidents": open_incidents(conn),
        "api": {"grids": "/api/v1/grids", "workers": "/api/v1/workers",
                "live": "/api/v1/workers/live", "stream": "/api/v1/stream",
                "track": "/api/v1/workers/{id}/track"},
    }
    html = PAGE.format(leaflet_css=vendor_path("leaflet", "dist/leaflet.css"),
                       leaflet_js=vendor_path("leaflet", "dist/leaflet.js"),
                       app_js=url_for("static", filename="js/command_center.js"),
                       config=_script_json(config))
    return Response(html, mimetype="text/html")

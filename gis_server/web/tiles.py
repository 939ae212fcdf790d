"""Vector tiles ``/tiles/LAYER/{z}/{x}/{y}.mvt`` and the map page that draws them.

The page ``/maps/tiles`` (Leaflet + Leaflet.VectorGrid, vendored) shows the big layers (all unit
grids, buildings) from tiles instead of inlining their GeoJSON. Building tiles up to z14 are
density points (``count`` per 4-pixel cell, see gis_server/core/tiles.py): the page draws them
as circles sized and shaded by the count, and footprints from z15. It is registered under the
endpoint ``maps.tiles_map`` so that access control treats it as an HTML map page (anonymous
callers are sent to the login form).
"""
from __future__ import annotations

import html
import json

from flask import Blueprint, Response, request

from ..access import personal_data_mode
from ..assets import VECTORGRID_JS, vendor_path
from ..core import tiles as core
from ..core.ogc import city_extent
from ..db import get_db
from ..errors import APIError
from ..layers import get as get_layer

bp = Blueprint("tiles", __name__)

MVT = "application/vnd.mapbox-vector-tile"
# The caller's scope shapes the content: caches other than the caller's own must not keep it.
CACHE_CONTROL = "private, max-age=60, must-revalidate"


@bp.get("/tiles/<layer>/<int:z>/<int:x>/<int:y>.mvt")
def tile(layer: str, z: int, x: int, y: int):
    if request.args:
        name = next(iter(request.args))
        raise APIError(400, "invalid_parameter", f"unknown query parameter {name!r}",
                       field=name)
    coll = core.get_tile_layer(layer)
    data = core.tile(get_db(), coll, z, x, y, personal_data_mode())
    tag = core.etag(data)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization, Cookie"}
    if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return Response(status=304, headers=headers)
    return Response(data, mimetype=MVT, headers=headers)


# Layers of the tile map: (tile layer, title, style, shown at start).
MAP_LAYERS = [
    ("grids_unit", "网格单元 Unit grids", "units", True),
    ("grids_community", "社区 Communities", "outline", True),
    ("buildings", "楼栋 Buildings", "buildings", True),
    ("facilities", "设施 Facilities", "points", False),
]

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{leaflet_css}">
<style>html, body, #map {{ height: 100%; margin: 0; }}
.leaflet-popup-content table th {{ text-align: left; padding-right: 6px; }}</style>
<script src="{leaflet_js}"></script>
<script src="{vectorgrid_js}"></script>
</head><body><div id="map"></div>
<script>
const bounds = {bounds};
const layers = {layers};
const styles = {styles};
const map = L.map("map", {{preferCanvas: false}});
if (bounds) {{ map.fitBounds([[bounds[1], bounds[0]], [bounds[3], bounds[2]]]); }}
else {{ map.setView([39.96, 116.3], 13); }}
{basemap}
const control = L.control.layers(null, null, {{collapsed: false}}).addTo(map);
function esc(v) {{ return String(v ?? "").replace(/[&<>"']/g,
    c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}})[c]); }}
window.tileLayers = {{}};
// Density points (buildings at z <= 14 carry one point per 4-pixel cell with a count):
// circles whose area grows with the count; footprints (z >= 15) keep the polygon style.
function densityStyle(base) {{
  return function (p) {{
    if (p.count === undefined) return base;
    return {{radius: Math.min(2 + Math.sqrt(p.count), 9), weight: 0, fill: true,
             fillColor: base.fillColor, fillOpacity: Math.min(0.25 + p.count / 40, 0.9)}};
  }};
}}
for (const [name, title, style, shown, minzoom, labels] of layers) {{
  const vs = {{}};
  vs[name] = style === "buildings" ? densityStyle(styles[style]) : styles[style];
  const layer = L.vectorGrid.protobuf("{tile_root}/" + name + "/{{z}}/{{x}}/{{y}}.mvt", {{
    vectorTileLayerStyles: vs, interactive: true, minZoom: 0, maxNativeZoom: 18,
    rendererFactory: L.svg.tile, getFeatureId: f => f.properties.fid,
    fetchOptions: {{credentials: "same-origin"}},
  }});
  layer.on("click", e => {{
    const p = e.layer.properties;
    const rows = Object.keys(labels).filter(k => k in p)
      .map(k => "<tr><th>" + esc(labels[k]) + "</th><td>" + esc(p[k]) + "</td></tr>").join("");
    L.popup().setLatLng(e.latlng).setContent("<table>" + rows + "</table>").openOn(map);
  }});
  window.tileLayers[name] = layer;
  control.addOverlay(layer, title);
  if (shown) layer.addTo(map);
}}
</script></body></html>"""


def _style(kind: str, layer_name: str) -> dict:
    style = get_layer(layer_name).style
    color = style.get("color", "#3388ff")
    if kind == "units":
        return {"color": color, "weight": 1, "fill": True, "fillColor": color,
                "fillOpacity": style.get("fill_opacity", 0.25)}
    if kind == "outline":
        return {"color": color, "weight": 2, "fill": False, "dashArray": "3 3"}
    if kind == "buildings":
        return {"color": color, "weight": 1, "fill": True, "fillColor": color,
                "fillOpacity": style.get("fill_opacity", 0.5)}
    return {"radius": style.get("radius", 4), "color": color, "fill": True,
            "fillColor": color, "fillOpacity": 0.8, "weight": 1}


def tiles_map():
    """A map of the big layers drawn from vector tiles."""
    if request.args:
        name = next(iter(request.args))
        raise APIError(400, "invalid_parameter", f"unknown query parameter {name!r}",
                       field=name)
    from flask import current_app
    available = core.tile_layers()
    layers = []
    for name, title, style, shown in MAP_LAYERS:
        if name in available:
            coll = available[name]
            labels = dict(coll.layer.labels)
            fields = {k: labels.get(k, k) for k in coll.tile_fields}
            if coll.tile_density:
                fields["count"] = "楼栋数 Buildings"
            layers.append([name, title, style, shown, coll.tile_minzoom, fields])
    styles = {"units": _style("units", "grids"), "outline": _style("outline", "grids"),
              "buildings": _style("buildings", "buildings"),
              "points": _style("points", "facilities")}
    basemap_url = current_app.config.get("BASEMAP_URL")
    basemap = ""
    if basemap_url:
        basemap = (f"L.tileLayer({json.dumps(basemap_url)}, {{attribution: "
                   f"{json.dumps(current_app.config.get('BASEMAP_ATTRIBUTION') or '')}}})"
                   ".addTo(map);")
    body = PAGE.format(
        title=html.escape("矢量瓦片地图 Vector-tile map"),
        leaflet_css=vendor_path("leaflet", "dist/leaflet.css"),
        leaflet_js=vendor_path("leaflet", "dist/leaflet.js"),
        vectorgrid_js=VECTORGRID_JS,
        bounds=json.dumps(city_extent(get_db())),
        layers=json.dumps(layers, ensure_ascii=False).replace("</", "<\\/"),
        styles=json.dumps(styles),
        basemap=basemap,
        tile_root=request.script_root + "/tiles",
    )
    return Response(body, mimetype="text/html")


@bp.record_once
def _register_map_page(state) -> None:
    # An endpoint named maps.* (access control: HTML page → login redirect when anonymous).
    state.app.add_url_rule("/maps/tiles", endpoint="maps.tiles_map", view_func=tiles_map)

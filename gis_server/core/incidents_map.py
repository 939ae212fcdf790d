"""The incidents map page: clustered incident markers (by status, overdue in red), a
choropleth of open incidents per unit grid, popups with the timeline, category/period filters.

Offline like every map (:func:`gis_server.core.maps.offline_map`): Leaflet.markercluster is
the vendored copy (:data:`gis_server.assets.MARKERCLUSTER_JS` / ``MARKERCLUSTER_CSS``).
"""
from __future__ import annotations

import html
import json

import folium
from branca.element import Element, MacroElement, Template
from folium.plugins import FastMarkerCluster
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..assets import MARKERCLUSTER_CSS, MARKERCLUSTER_JS
from ..layers import get as get_layer
from . import categories as cats
from .features import feature_collection
from .incidents import OPEN_STATES, list_filters
from .maps import bounds, offline_map
from .workcalendar import load as load_calendar

MAX_MARKERS = 20_000
STATUS_COLORS = {"reported": "#7570b3", "filed": "#1f78b4", "dispatched": "#ff7f00",
                 "handling": "#e6ab02", "feedback": "#66a61e", "closed": "#1b9e77",
                 "evaluated": "#1b9e77", "rejected": "#999999", "parked": "#6a3d9a"}
OVERDUE_COLOR = "#d7191c"
CHOROPLETH = ["#ffffff", "#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15"]
PAGE_TITLE = "案件地图 Incidents map"


def _esc(value) -> str:
    return "" if value is None else html.escape(str(value))


def map_data(conn: Connection, now, category=None, start=None, end=None) -> tuple[dict, list]:
    """(unit grids with ``open_count``, incident rows with their timelines) — in SQL."""
    where, p = list_filters(category=category, start=start, end=end)
    p.update(now=now, open=list(OPEN_STATES), limit=MAX_MARKERS)
    clause = (" AND " + " AND ".join(where)) if where else ""
    grids = feature_collection(conn, f"""
        SELECT u.code AS id, u.code, u.name, count(i.id) AS open_count, u.geom
        FROM grids u
        LEFT JOIN incidents i ON i.grid_id = u.id AND i.status = ANY(:open) {clause}
        WHERE u.level = 'unit' AND u.valid_to IS NULL
        GROUP BY u.id ORDER BY u.code
    """, p)
    rows = conn.execute(text(f"""
        SELECT i.id, ST_Y(i.geom) AS lat, ST_X(i.geom) AS lon, i.status, i.category,
               i.description, u.code AS grid_code, i.due_at, i.reported_at,
               (i.status IN ('dispatched', 'handling', 'feedback') AND i.due_at < :now)
                   AS overdue,
               (SELECT json_agg(json_build_object('at', e.at, 'actor', e.actor,
                                                  'action', e.action, 'to', e.to_state,
                                                  'note', e.note) ORDER BY e.at, e.id)
                FROM incident_events e WHERE e.incident_id = i.id) AS timeline
        FROM incidents i LEFT JOIN grids u ON u.id = i.grid_id
        WHERE true {clause}
        ORDER BY i.id DESC LIMIT :limit
    """), p).all()
    return grids, rows


def _popup(r, names: dict) -> str:
    status = _esc(r.status) + (' <b style="color:#d7191c">OVERDUE 超期</b>' if r.overdue
                               else "")
    lines = "".join(
        f"<tr><td>{_esc(str(e['at'])[:16].replace('T', ' '))}</td><td>{_esc(e['action'])}"
        f"</td><td>{_esc(e['to'])}</td><td>{_esc(e['actor'])}</td>"
        f"<td>{_esc(e.get('note'))}</td></tr>" for e in (r.timeline or []))
    due = _esc(r.due_at.astimezone(load_calendar().tz).isoformat(timespec="minutes")) \
        if r.due_at else "—"
    return (f'<div class="incident-popup"><b>#{r.id}</b> {_esc(names.get(r.category, r.category))}'
            f"<br>Status: {status}<br>Grid: {_esc(r.grid_code)}<br>Due: {due}"
            f"<br><i>{_esc((r.description or '')[:200])}</i>"
            f'<table class="timeline"><tr><th>When</th><th>Action</th><th>State</th>'
            f"<th>By</th><th>Note</th></tr>{lines}</table></div>")


def choropleth_class(count: int, top: int) -> int:
    """0 for no open incident, else 1..5 by share of the busiest grid."""
    if count <= 0:
        return 0
    return min(5, 1 + int(4 * count / max(top, 1)))


CALLBACK = """function (row) {
    var icon = L.divIcon({className: 'incident-marker',
        html: '<span style="background:' + row[3] + '"></span>', iconSize: [14, 14]});
    var marker = L.marker(new L.LatLng(row[0], row[1]), {icon: icon, title: row[2]});
    marker.bindPopup(row[4], {maxWidth: 460});
    return marker;
}"""

PAGE_CSS = """<style>
.incident-marker span { display:block; width:14px; height:14px; border-radius:7px;
  border:2px solid #fff; box-shadow:0 0 2px #000; }
.incident-popup table.timeline { font-size:11px; border-collapse:collapse; margin-top:4px; }
.incident-popup table.timeline td, .incident-popup table.timeline th { border-top:1px solid #ddd;
  padding:1px 4px; vertical-align:top; }
.incident-panel { background:#fff; padding:6px 8px; border-radius:4px; font:12px sans-serif;
  box-shadow:0 0 4px rgba(0,0,0,.3); }
.incident-panel i { display:inline-block; width:12px; height:12px; margin-right:4px; }
</style>"""


class _Panel(MacroElement):
    """A Leaflet control holding fixed HTML (the filter form, the legend)."""
    _template = Template("""
        {% macro script(this, kwargs) %}
        (function(){
            var ctl = L.control({position: {{ this.position|tojson }}});
            ctl.onAdd = function () {
                var div = L.DomUtil.create('div', 'incident-panel {{ this.css }}');
                div.innerHTML = {{ this.html|tojson }};
                L.DomEvent.disableClickPropagation(div);
                return div;
            };
            ctl.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}""")

    def __init__(self, html_: str, position: str, css: str):
        super().__init__()
        self.html, self.position, self.css = html_, position, css


def filter_form(category: list[str] | None, start: str | None, end: str | None) -> str:
    options = ['<option value="">All categories 全部</option>'] + [
        f'<option value="{_esc(c.code)}"{" selected" if category and c.code in category else ""}>'
        f"{_esc(c.code)} {_esc(c.name)}</option>" for c in cats.load().values()]
    return (f'<form method="get" id="incident-filter"><select name="category">{"".join(options)}'
            f'</select><br>From <input type="date" name="from" value="{_esc(start)}"> '
            f'To <input type="date" name="to" value="{_esc(end)}"> '
            '<button type="submit">Filter</button></form>')


def legend(top: int) -> str:
    items = [f'<i style="background:{c}"></i>{_esc(s)}' for s, c in STATUS_COLORS.items()
             if s != "evaluated"]
    items.append(f'<i style="background:{OVERDUE_COLOR}"></i>overdue 超期')
    return ("<b>Incidents</b><br>" + "<br>".join(items) +
            f"<br><b>Open per grid</b> (max {top})<br>" +
            "".join(f'<i style="background:{c};border:1px solid #ccc"></i>' for c in CHOROPLETH))


def incidents_map(grids: dict, rows: list, *, category=None, start_text=None, end_text=None,
                  basemap_url=None, attribution="") -> str:
    names = {c.code: c.name for c in cats.load().values()}
    style = get_layer("grids").style
    top = max((f["properties"]["open_count"] for f in grids["features"]), default=0)
    for f in grids["features"]:
        p = f["properties"]
        p["fill"] = CHOROPLETH[choropleth_class(p["open_count"], top)]
        p["code"], p["name"] = _esc(p["code"]), _esc(p["name"])
    box = bounds(grids)
    center = [(box[0][0] + box[1][0]) / 2, (box[0][1] + box[1][1]) / 2] if box else None
    m = offline_map(center, basemap_url=basemap_url, attribution=attribution)
    m.options["maxZoom"] = 19  # markercluster needs it when there is no tile layer
    m.get_root().title = PAGE_TITLE
    m.get_root().header.add_child(Element(PAGE_CSS), name="incidents_css")
    if grids["features"]:
        layer = folium.GeoJson(
            grids, name="Open incidents per grid 网格未结案件",
            style_function=lambda f: {"color": style.get("color", "#1f4e79"), "weight": 1,
                                      "fillColor": f["properties"]["fill"],
                                      "fillOpacity": 0.6},
        )
        folium.GeoJsonTooltip(fields=["code", "name", "open_count"],
                              aliases=["Grid", "Name", "Open incidents"]).add_to(layer)
        layer.add_to(m)
    data = [[r.lat, r.lon, f"#{r.id} {r.status}",
             OVERDUE_COLOR if r.overdue else STATUS_COLORS.get(r.status, "#555"),
             _popup(r, names)] for r in rows]
    cluster = FastMarkerCluster(data, callback=CALLBACK, name="Incidents 案件")
    cluster.default_js = [("markerclusterjs", MARKERCLUSTER_JS)]
    cluster.default_css = [("markerclustercss", MARKERCLUSTER_CSS[0]),
                           ("markerclusterdefaultcss", MARKERCLUSTER_CSS[1])]
    cluster.add_to(m)
    m.add_child(_Panel(filter_form(category, start_text, end_text), "topright", "filter"))
    m.add_child(_Panel(legend(top), "bottomright", "legend"))
    if box:
        m.fit_bounds(box)
    folium.LayerControl(collapsed=True, position="topleft").add_to(m)
    m.get_root().html.add_child(Element(
        f'<script type="application/json" id="incident-count">{json.dumps(len(rows))}'
        "</script>"))
    return m.get_root().render()

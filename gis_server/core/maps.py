"""Map pages (folium/Leaflet) built from plain GeoJSON dicts: no Flask, no database.

Every page is intranet-safe: folium's CDN links are replaced by the vendored copies served
under ``/static/vendor`` (:mod:`gis_server.assets`), and there is no basemap unless a tile URL
template is given (e.g. a city's own tile server).
"""
from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

import folium
from branca.element import Element

from ..assets import FOLIUM_CSS, FOLIUM_JS
from ..layers import get as get_layer
from .grids import PREFIX_DIGITS

OUTLINE_LEVELS = ("district", "street", "community")
LEVEL_TITLES = {
    "district": "区 District",
    "street": "街道 Street / town",
    "community": "社区 Community",
    "unit": "网格单元 Unit grids",
}
# Drawn thicker the higher the level, so nested boundaries stay readable.
OUTLINE_WEIGHTS = {"district": 4, "street": 2.5, "community": 1.5}
OUTLINE_DASHES = {"district": None, "street": "8 4", "community": "3 3"}

WORKER_ROLE_LABELS = {
    "grid_admin": "网格员",
    "coordinator": "协管员",
    "police": "社区民警",
    "firefighter": "消防员",
    "supervisor": "监督员",
    "volunteer": "志愿者",
    "leader": "责任领导",
}
# Popup labels for the statistics (layers/grids.toml labels its own fields; these are not
# columns of the layer but the ``with_stats`` additions).
STAT_LABELS = {"workers": "Workers", "building_count": "Buildings",
               "household_count": "Households"}
DEFAULT_PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
PAGE_TITLE = "网格地图 Grid map"
PAGE_CSS = """<style>
.foliumpopup table th, .foliumpopup table td { vertical-align: top; padding: 2px 6px; }
.foliumpopup table th { white-space: nowrap; }
.leaflet-control-layers-overlays label { margin-bottom: 0; }
path.leaflet-interactive:focus { outline: none; }
</style>"""


def _escape(value) -> str:
    return "" if value is None else html.escape(str(value))


def workers_html(workers: Iterable[Mapping] | None) -> str:
    """Escaped HTML of a unit grid's workers: ``name (role) phone`` one per line."""
    lines = []
    for w in workers or ():
        role = WORKER_ROLE_LABELS.get(w.get("role"), w.get("role"))
        line = _escape(w.get("name"))
        if role:
            line += f" ({_escape(role)})"
        if w.get("phone"):
            phone = _escape(w["phone"])
            line += f' <a href="tel:{phone}">{phone}</a>'
        lines.append(line)
    return "<br>".join(lines) if lines else "—"


def community_colors(community_codes: Iterable[str], palette: list[str]) -> dict[str, str]:
    """Colour of each community: palette[index of the community in code order]."""
    palette = palette or DEFAULT_PALETTE
    return {code: palette[i % len(palette)]
            for i, code in enumerate(sorted(set(community_codes)))}


def _coords(geometry: Mapping | None):
    if not geometry:
        return
    if geometry.get("type") == "GeometryCollection":
        for g in geometry.get("geometries", ()):
            yield from _coords(g)
        return
    stack = [geometry.get("coordinates")]
    while stack:
        item = stack.pop()
        if not item:
            continue
        if isinstance(item[0], (int, float)):
            yield item[0], item[1]
        else:
            stack.extend(item)


def bounds(*collections: Mapping | None) -> list[list[float]] | None:
    """``[[south, west], [north, east]]`` of all features, or None when there are none."""
    xs, ys = [], []
    for fc in collections:
        for feature in (fc or {}).get("features", ()):
            for x, y in _coords(feature.get("geometry")):
                xs.append(x)
                ys.append(y)
    if not xs:
        return None
    return [[min(ys), min(xs)], [max(ys), max(xs)]]


def is_ancestor_or_self(code: str, other: str, level: str) -> bool:
    """True when grid ``code`` (of ``level``) contains ``other`` (or is it), by code prefix."""
    n = PREFIX_DIGITS[level] if level != "unit" else len(code)
    return code[:n] == other[:n] and (level != "unit" or code == other)


def _unit_collection(units: Mapping, colors: dict[str, str], fallback: str) -> dict:
    """Only what the page shows, display values HTML-escaped (popups use innerHTML)."""
    features = []
    for feature in units.get("features", ()):
        p = feature.get("properties") or {}
        features.append({
            "type": "Feature",
            "id": p.get("code", feature.get("id")),
            "geometry": feature.get("geometry"),
            "properties": {
                "code": _escape(p.get("code")),
                "name": _escape(p.get("name")),
                "community": _escape(p.get("parent_code")),
                "workers": workers_html(p.get("workers")),
                "building_count": p.get("building_count", 0) or 0,
                "household_count": p.get("household_count", 0) or 0,
                "fill": colors.get(p.get("parent_code"), fallback),
            },
        })
    return {"type": "FeatureCollection", "features": features}


def _outline_collection(fc: Mapping) -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": (f.get("properties") or {}).get("code", f.get("id")),
         "geometry": f.get("geometry"),
         "properties": {"code": _escape((f.get("properties") or {}).get("code")),
                        "name": _escape((f.get("properties") or {}).get("name"))}}
        for f in fc.get("features", ())]}


def offline_map(location: list[float] | None = None, zoom_start: int = 12,
                basemap_url: str | None = None, attribution: str = "") -> folium.Map:
    """A folium Map with vendored JS/CSS and no tiles unless ``basemap_url`` is given."""
    m = folium.Map(location=location, zoom_start=zoom_start, tiles=None,
                   control_scale=True)
    m.default_js = list(FOLIUM_JS)
    m.default_css = list(FOLIUM_CSS)
    m.get_root().title = PAGE_TITLE
    m.get_root().header.add_child(Element(PAGE_CSS), name="grid_map_css")
    if basemap_url:
        folium.TileLayer(tiles=basemap_url, attr=attribution or " ", name="Basemap",
                         overlay=False, control=True).add_to(m)
    return m


def grid_map(units: Mapping, outlines: Mapping[str, Mapping] | None = None, *,
             community: str | None = None, basemap_url: str | None = None,
             attribution: str = "", layer=None) -> str:
    """The grid hierarchy as a full HTML page.

    ``units``: FeatureCollection of unit grids (``list_grids(level="unit", with_stats=True)``);
    ``outlines``: level → FeatureCollection for district/street/community (all of the city's,
    so that community colours do not depend on a filter); ``community``: show only that
    community's outline and its ancestors' (``units`` are expected to be filtered already).
    """
    layer = layer or get_layer("grids")
    style = layer.style
    labels = {**STAT_LABELS, **layer.labels}
    outlines = outlines or {}
    line_color = style.get("color", "#1f4e79")
    weight = style.get("weight", 1)
    fill_opacity = style.get("fill_opacity", 0.25)

    community_codes = [(f.get("properties") or {}).get("code")
                       for f in outlines.get("community", {}).get("features", ())]
    community_codes += [(f.get("properties") or {}).get("parent_code")
                        for f in units.get("features", ())]
    colors = community_colors([c for c in community_codes if c], style.get("palette", []))
    unit_fc = _unit_collection(units, colors, line_color)

    shown_outlines = {}
    for level in style.get("outline_levels", OUTLINE_LEVELS):
        fc = outlines.get(level)
        if not fc:
            continue
        if community:
            fc = {"type": "FeatureCollection", "features": [
                f for f in fc.get("features", ())
                if is_ancestor_or_self((f.get("properties") or {}).get("code", ""),
                                       community, level)]}
        if fc["features"]:
            shown_outlines[level] = _outline_collection(fc)

    box = bounds(unit_fc) or bounds(*shown_outlines.values())
    center = ([(box[0][0] + box[1][0]) / 2, (box[0][1] + box[1][1]) / 2] if box else None)
    m = offline_map(center, basemap_url=basemap_url, attribution=attribution)

    if unit_fc["features"]:
        units_layer = folium.GeoJson(
            unit_fc, name=LEVEL_TITLES["unit"],
            style_function=lambda f: {"color": line_color, "weight": weight,
                                      "fillColor": f["properties"]["fill"],
                                      "fillOpacity": fill_opacity},
            highlight_function=lambda f: {"weight": weight + 2, "fillOpacity":
                                          min(1.0, fill_opacity + 0.3)},
        )
        fields = ["code", "name", "workers", "building_count", "household_count"]
        folium.GeoJsonPopup(fields=fields, aliases=[labels.get(f, f) for f in fields],
                            max_width=420).add_to(units_layer)
        folium.GeoJsonTooltip(fields=["code", "name"],
                              aliases=[labels["code"], labels["name"]],
                              sticky=True).add_to(units_layer)
        units_layer.add_to(m)

    # Outlines on top of the units but not clickable, so that clicks reach the unit grids.
    for level in ("community", "street", "district"):
        if level not in shown_outlines:
            continue
        dash = OUTLINE_DASHES.get(level)
        folium.GeoJson(
            shown_outlines[level], name=LEVEL_TITLES.get(level, level),
            style_function=lambda f, w=OUTLINE_WEIGHTS.get(level, weight), d=dash: {
                "color": line_color, "weight": w, "fill": False, "dashArray": d},
            interactive=False,
        ).add_to(m)

    if box:
        m.fit_bounds(box)
    folium.LayerControl(collapsed=False).add_to(m)
    return m.get_root().render()


def message_page(title: str, message: str) -> str:
    """A self-contained page (no external resources) for states with nothing to map."""
    return (
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
        f"<title>{_escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:3em;color:#1f4e79}</style></head>"
        f"<body><h1>{_escape(title)}</h1><p>{_escape(message)}</p></body></html>\n"
    )

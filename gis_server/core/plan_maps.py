"""The before/after map of a plan (folium, offline like every map page).

Layers: the current grids of the touched parents ("before", grey outlines), the draft grids
("after": kept grids plain, changed/new grids highlighted, removed grids dashed red) and the
validation problems (red hatching with a popup naming type, grids and area).
"""
from __future__ import annotations

from collections.abc import Mapping

import folium

from .maps import _escape, bounds, offline_map

STATUS_STYLE = {
    "kept": {"color": "#1f4e79", "weight": 1, "fillColor": "#9ecae1", "fillOpacity": 0.15},
    "changed": {"color": "#d95f02", "weight": 3, "fillColor": "#fdae6b", "fillOpacity": 0.45},
    "new": {"color": "#1b9e77", "weight": 3, "fillColor": "#a1d99b", "fillOpacity": 0.45},
    "removed": {"color": "#cb181d", "weight": 2, "fill": False, "dashArray": "6 4"},
}
PROBLEM_STYLE = {"color": "#cb181d", "weight": 2, "fillColor": "#cb181d", "fillOpacity": 0.6}


def _props(fc: Mapping, keys) -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f.get("id"), "geometry": f.get("geometry"),
         "properties": {k: _escape((f.get("properties") or {}).get(k)) for k in keys}}
        for f in fc.get("features", ()) if f.get("geometry")]}


def plan_map(plan: Mapping, before: Mapping, after: Mapping, problems: list[dict], *,
             basemap_url: str | None = None, attribution: str = "") -> str:
    before_fc = _props(before, ("code", "name"))
    after_fc = _props(after, ("code", "name", "status", "parent_code"))
    problem_fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": p["geometry"],
         "properties": {"type": _escape(p["type"]), "grids": _escape(", ".join(p["grids"])),
                        "measure": _escape(f"{p['area_m2']} m²" if "area_m2" in p
                                           else f"{p.get('length_m')} m"),
                        "message": _escape(p.get("message"))}}
        for p in problems if p.get("geometry")]}
    box = bounds(after_fc, before_fc)
    center = [(box[0][0] + box[1][0]) / 2, (box[0][1] + box[1][1]) / 2] if box else None
    m = offline_map(center, basemap_url=basemap_url, attribution=attribution)
    m.get_root().title = _escape(f"规划 Plan {plan['id']}: {plan['name']}")
    if before_fc["features"]:
        folium.GeoJson(before_fc, name="调整前 Before (current)",
                       style_function=lambda f: {"color": "#636363", "weight": 2,
                                                 "fill": False, "dashArray": "2 4"},
                       interactive=False).add_to(m)
    if after_fc["features"]:
        layer = folium.GeoJson(
            after_fc, name="调整后 After (draft)",
            style_function=lambda f: STATUS_STYLE.get(f["properties"]["status"],
                                                      STATUS_STYLE["kept"]))
        folium.GeoJsonPopup(fields=["code", "name", "status", "parent_code"],
                            aliases=["Code", "Name", "Status", "Parent"]).add_to(layer)
        folium.GeoJsonTooltip(fields=["code", "status"], aliases=["Code", "Status"],
                              sticky=True).add_to(layer)
        layer.add_to(m)
    if problem_fc["features"]:
        layer = folium.GeoJson(problem_fc, name=f"问题 Problems ({len(problem_fc['features'])})",
                               style_function=lambda f: PROBLEM_STYLE,
                               marker=folium.CircleMarker(radius=6, color="#cb181d"))
        folium.GeoJsonPopup(fields=["type", "grids", "measure", "message"],
                            aliases=["Problem", "Grids", "Size", ""]).add_to(layer)
        layer.add_to(m)
    if box:
        m.fit_bounds(box)
    folium.LayerControl(collapsed=False).add_to(m)
    return m.get_root().render()

"""The incidents map: offline HTML, clusters, choropleth, filters, popups with the timeline,
rendered in a real headless chromium."""
from __future__ import annotations

import re

import pytest
import shapely
from sqlalchemy import text

from test_maps import is_external, page_resources


@pytest.fixture(scope="module")
def mapped(engine, client_as_module):
    """Incidents for the map: one P0601 (unique category) that goes through a few steps."""
    admin = client_as_module
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT code, ST_AsBinary(geom) FROM grids WHERE level = "
                                 "'unit' AND valid_to IS NULL ORDER BY code LIMIT 3")).all()
    ids = []
    for code, wkb in rows:
        p = shapely.from_wkb(bytes(wkb)).point_on_surface()
        r = admin.post("/api/v1/incidents", json={"category": "P0601", "lon": p.x,
                                                   "lat": p.y, "description": "健身器材 <b>坏</b>"})
        assert r.status_code == 201
        ids.append(r.json["id"])
    for action in ("file", "dispatch"):
        assert admin.post(f"/api/v1/incidents/{ids[0]}/actions",
                          json={"action": action}).status_code == 200
    return ids, [r[0] for r in rows]


@pytest.fixture(scope="module")
def client_as_module(app, accounts):
    from helpers import authed_client
    return authed_client(app, accounts["admin"]["token"])


def test_page_is_offline_and_filters(client, mapped):
    ids, codes = mapped
    r = client.get("/maps/incidents?category=P0601")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    resources = page_resources(html)
    assert any(u.endswith("leaflet.markercluster.js") for u in resources)
    assert [u for u in resources if is_external(u)] == []
    assert [u for u in re.findall(r"https?://[^\s\"'<>)]+", html) if is_external(u)] == []
    for url in resources:
        assert client.get(url).status_code == 200, url
    count = int(re.search(r'id="incident-count">(\d+)<', html).group(1))
    assert count >= 3
    assert "<b>坏</b>" not in html  # descriptions are escaped
    none = client.get("/maps/incidents?category=P0601&from=2099-01-01").get_data(as_text=True)
    assert re.search(r'id="incident-count">0<', none)
    for q, field in (("category=NOPE", "category"), ("from=x", "from"),
                     ("from=2020-02-01&to=2020-01-01", "to")):
        bad = client.get(f"/maps/incidents?{q}")
        assert bad.status_code == 400 and bad.json["field"] == field


def test_anonymous_is_sent_to_login(app):
    r = app.test_client().get("/maps/incidents")
    assert r.status_code == 302 and "/login" in r.location


@pytest.mark.browser
def test_map_renders_offline_in_browser(offline_page, live_server, accounts, mapped, engine):
    ids, codes = mapped
    page = offline_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_extra_http_headers({"Authorization": f"Bearer {accounts['admin']['token']}"})
    response = page.goto(f"{live_server}/maps/incidents?category=P0601")
    assert response.status == 200
    page.wait_for_selector(".leaflet-container")
    page.wait_for_function("document.querySelectorAll('path.leaflet-interactive').length > 0")
    with engine.connect() as conn:
        n_units = conn.execute(text("SELECT count(*) FROM grids WHERE level = 'unit' AND "
                                    "valid_to IS NULL")).scalar_one()
    polygons = page.locator("path.leaflet-interactive")
    assert polygons.count() == n_units
    # choropleth: grids with open incidents are filled with a non-white class colour
    fills = polygons.evaluate_all("ps => ps.map(p => p.getAttribute('fill'))")
    assert "#ffffff" in fills and len(set(fills)) >= 2
    # markers or clusters are on the map; the filter form and legend are there
    page.wait_for_function("document.querySelectorAll('.incident-marker, .marker-cluster')"
                           ".length > 0")
    assert page.locator("#incident-filter select[name=category]").input_value() == "P0601"
    assert "overdue" in page.locator(".incident-panel.legend").inner_text()
    # zoom to the dispatched incident's marker and open its popup: the timeline is there
    page.evaluate("""() => { for (const k in window) { const v = window[k];
        if (v && v instanceof L.Map) { v.setZoom(18); } } }""")
    page.evaluate("""(id) => { for (const k in window) { const v = window[k];
        if (v && v.getLayers && v.zoomToShowLayer) { v.getLayers().forEach(m => {
            if (m.options.title === '#' + id + ' dispatched') {
                v.zoomToShowLayer(m, () => m.openPopup()); } }); } } }""", ids[0])
    page.wait_for_selector(".leaflet-popup-content .timeline")
    popup = page.locator(".leaflet-popup-content").inner_text()
    assert f"#{ids[0]}" in popup and "dispatch" in popup and "report" in popup
    assert "Due:" in popup and "+08:00" in popup
    # the description is shown as text, not as markup
    assert "<b>坏</b>" in popup and page.locator(".leaflet-popup-content i b").count() == 0
    assert page.external_requests == []
    assert errors == []

"""The before/after map of a plan, in HTML and in a real headless chromium (offline)."""
from __future__ import annotations

import re

import pytest
import shapely
from sqlalchemy import text

from test_maps import is_external, page_resources


@pytest.fixture
def draft(client, engine):
    """A draft where one unit grid grows into its neighbours (changed + overlap problems)."""
    with engine.connect() as conn:
        code, wkb = conn.execute(text(
            "SELECT code, ST_AsBinary(geom) FROM grids WHERE level = 'unit' AND "
            "valid_to IS NULL ORDER BY code LIMIT 1")).one()
    grown = shapely.buffer(shapely.from_wkb(bytes(wkb)), 0.0002, join_style="mitre")
    pid = client.post("/api/v1/plans", json={"name": "map <b>check</b>"}).json["id"]
    r = client.put(f"/api/v1/plans/{pid}/grids/{code}",
                   json={"geometry": shapely.geometry.mapping(grown)})
    assert r.status_code == 200
    yield {"id": pid, "code": code}
    client.post(f"/api/v1/plans/{pid}/discard")


def test_plan_map_html_is_offline(client, draft):
    response = client.get(f"/maps/plans/{draft['id']}")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert [u for u in page_resources(html) if is_external(u)] == []
    assert "<b>check</b>" not in html  # the plan name is escaped
    assert "overlap" in html and draft["code"] in html


def test_plan_map_access(client_as, draft):
    assert client_as("analyst").get(f"/maps/plans/{draft['id']}").status_code == 403
    assert client_as("community_admin").get(f"/maps/plans/{draft['id']}").status_code == 200
    assert client_as("planner").get("/maps/plans/999999").status_code == 404


@pytest.mark.browser
def test_plan_map_in_browser(offline_page, live_server, accounts, draft):
    page = offline_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_extra_http_headers({"Authorization": f"Bearer {accounts['planner']['token']}"})
    response = page.goto(f"{live_server}/maps/plans/{draft['id']}")
    assert response.status == 200
    page.wait_for_selector(".leaflet-container")
    page.wait_for_function("document.querySelectorAll('path.leaflet-interactive').length > 0")
    strokes = page.locator("path.leaflet-interactive").evaluate_all(
        "ps => ps.map(p => [p.getAttribute('stroke'), p.getAttribute('fill')])")
    assert ["#d95f02", "#fdae6b"] in strokes  # the changed grid, highlighted
    assert ["#cb181d", "#cb181d"] in strokes  # problems marked
    labels = page.locator(".leaflet-control-layers-overlays label").all_inner_texts()
    assert any("Before" in t for t in labels) and any("After" in t for t in labels)
    assert any(re.search(r"Problems \(\d+\)", t) for t in labels)
    # Clicking a problem opens its popup: type, grids and size.
    problem = page.locator("path.leaflet-interactive[stroke='#cb181d'][fill='#cb181d']").first
    problem.click(force=True)
    page.wait_for_selector(".leaflet-popup-content")
    popup = page.locator(".leaflet-popup-content").inner_text()
    assert re.search(r"overlap|outside_parent", popup) and "m²" in popup
    assert page.external_requests == []
    assert errors == []


def test_anonymous_browser_is_sent_to_login(app, draft):
    response = app.test_client().get(f"/maps/plans/{draft['id']}")
    assert response.status_code == 302 and "/login" in response.location

"""The command-centre map in real headless chromium: offline, live over SSE."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests
from sqlalchemy import text


def worker_in(engine, prefix):
    with engine.connect() as conn:
        return conn.execute(text("""
            SELECT w.id, w.device_id, w.phone, ST_X(ST_PointOnSurface(g.geom)) AS x,
                   ST_Y(ST_PointOnSurface(g.geom)) AS y
            FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id
            JOIN grids g ON g.code = wg.grid_code AND g.valid_to IS NULL
            WHERE w.role = 'volunteer' AND wg.grid_code LIKE :p || '%'
            ORDER BY w.id LIMIT 1"""), {"p": prefix}).one()


def test_page_is_html_without_remote_resources(client_as, accounts):
    scope = accounts["community_admin"]["scope"]
    r = client_as("command_center").get(f"/maps/command-center?scope={scope}")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "/static/vendor/leaflet/dist/leaflet.js" in html
    assert "/static/js/command_center.js" in html
    assert "https://" not in html and "http://" not in html
    assert client_as("community_admin").get(
        f"/maps/command-center?scope={accounts['community_admin_b']['scope']}"
    ).status_code == 404
    assert client_as(None).get("/maps/command-center").status_code == 302


@pytest.mark.browser
def test_marker_moves_when_a_phone_reports(offline_page, live_server, engine, accounts):
    page = offline_page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    scope = accounts["community_admin"]["scope"]
    w = worker_in(engine, scope[:12])
    t0 = datetime.now(timezone.utc) - timedelta(seconds=60)
    r = requests.get(f"{live_server}/track/osmand", params={
        "id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(t0.timestamp()),
        "batt": 81})
    assert r.status_code == 200

    page.goto(f"{live_server}/maps/command-center?scope={scope}")
    assert "/login" in page.url
    page.fill("#username", accounts["command_center"]["user"]["username"])
    page.fill("#password", accounts["command_center"]["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.goto(f"{live_server}/maps/command-center?scope={scope}")
    page.wait_for_function("window.commandCenter && window.commandCenter.ready", timeout=15000)
    start = page.evaluate(f"commandCenter.markers[{w.id}].getLatLng()")
    assert start["lat"] == pytest.approx(w.y, abs=1e-6)
    assert start["lng"] == pytest.approx(w.x, abs=1e-6)

    # the phone reports ~50 m further north: the marker follows, through SSE
    lat2 = w.y + 0.00045
    r = requests.post(f"{live_server}/track/osmand", data={
        "id": w.device_id, "lat": lat2, "lon": w.x,
        "timestamp": int((t0 + timedelta(seconds=30)).timestamp())})
    assert r.status_code == 200
    page.wait_for_function(
        f"Math.abs(commandCenter.markers[{w.id}].getLatLng().lat - {lat2}) < 1e-6",
        timeout=10000)

    # popup: role, phone (command centre sees it), battery; today's track on the map
    html = page.evaluate(f"""() => {{
        const m = commandCenter.markers[{w.id}]; m.openPopup();
        return m.getPopup().getContent() instanceof Function
            ? m.getPopup().getElement().innerHTML : m.getPopup().getContent(); }}""")
    assert "志愿者" in html and w.phone in html and "81%" in html
    n = page.evaluate(f"commandCenter.showTrack({w.id}).then(f => f.properties.points)")
    assert n >= 2
    assert page.evaluate("Object.keys(commandCenter.markers).length") >= 1
    assert page.external_requests == []
    assert errors == []

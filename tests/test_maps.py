"""Grid map page (folium/Leaflet): offline-safe HTML, rendered in a real headless browser."""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import urlparse

import pytest
from sqlalchemy import text

from helpers import authed_client

from gis_server import create_app
from gis_server.core.maps import bounds, community_colors, grid_map, workers_html
from gis_server.layers import get as get_layer

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
BASEMAP = "http://127.0.0.1:9/{z}/{x}/{y}.png"


class _Resources(HTMLParser):
    """Every URL the page would fetch by itself: <script src>, <link href>, <img src>."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


def page_resources(html: str) -> list[str]:
    parser = _Resources()
    parser.feed(html)
    tiles = re.findall(r"L\.tileLayer(?:\.wms)?\(\s*\"([^\"]+)\"", html)
    css_urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", html)
    return parser.urls + tiles + css_urls


def is_external(url: str) -> bool:
    parsed = urlparse(url if not url.startswith("//") else "http:" + url)
    return bool(parsed.netloc) and parsed.hostname not in LOCAL_HOSTS


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def unit_codes(engine, community: str | None = None) -> set[str]:
    sql = ("SELECT g.code FROM grids g LEFT JOIN grids p ON p.id = g.parent_id "
           "WHERE g.level = 'unit' AND g.valid_to IS NULL")
    if community:
        sql += " AND p.code = :c"
    return {r[0] for r in rows(engine, sql, c=community)}


def community_codes(engine) -> list[str]:
    return [r[0] for r in rows(engine, "SELECT code FROM grids WHERE level = 'community' "
                                       "AND valid_to IS NULL ORDER BY code")]


# --- the HTML -----------------------------------------------------------------------------
def test_page_loads_nothing_from_the_internet(client, engine):
    response = client.get("/maps/grids")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    resources = page_resources(html)
    assert any(u.endswith("/leaflet.js") for u in resources)
    assert any(u.endswith("/leaflet.css") for u in resources)
    assert [u for u in resources if is_external(u)] == []
    # Nothing else in the page names a remote http(s) host either (no CDN, no tiles).
    remote = [u for u in re.findall(r"https?://[^\s\"'<>)]+", html) if is_external(u)]
    assert remote == []
    # Every local resource is actually served.
    for url in resources:
        assert client.get(url).status_code == 200, url
    # No basemap by default.
    assert "L.tileLayer" not in html
    # Every unit grid is in the page.
    assert all(code in html for code in unit_codes(engine))


def test_basemap_is_configurable(database_url, accounts):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "BASEMAP_URL": BASEMAP,
                      "BASEMAP_ATTRIBUTION": "© intranet tiles"})
    html = authed_client(app, accounts["planner"]["token"]).get("/maps/grids") \
        .get_data(as_text=True)
    assert BASEMAP in html
    assert re.findall(r"L\.tileLayer\(\s*\"([^\"]+)\"", html) == [BASEMAP]
    assert "intranet tiles" in html
    assert [u for u in page_resources(html) if is_external(u)] == []


@pytest.mark.parametrize("value", ["abc", "123", "1101080010010", "11010800100104",
                                   "110108001001000x"])
def test_bad_community_is_400_naming_the_field(client, value):
    response = client.get(f"/maps/grids?community={value}")
    assert response.status_code == 400
    assert response.is_json
    assert response.json["field"] == "community"
    assert response.json["error"] == "invalid_parameter"


def test_unknown_community_is_404(client):
    response = client.get("/maps/grids?community=99999999999900")
    assert response.status_code == 404
    assert response.is_json and response.json["error"] == "not_found"


def test_community_filter_shows_only_its_units(client, engine):
    communities = community_codes(engine)
    assert len(communities) >= 2
    chosen = communities[1]
    html = client.get(f"/maps/grids?community={chosen}").get_data(as_text=True)
    mine = unit_codes(engine, chosen)
    others = unit_codes(engine) - mine
    assert mine and others
    assert all(code in html for code in mine)
    assert not any(code in html for code in others)
    # Colours do not depend on the filter: the community keeps its palette entry.
    palette = get_layer("grids").style["palette"]
    assert palette[1 % len(palette)] in html


def test_empty_city_page(server_url_for_empty_city):
    from gis_server.core import accounts as acc
    from gis_server.db import engine_for

    app = create_app({"TESTING": True, "DATABASE_URL": server_url_for_empty_city})
    with engine_for(server_url_for_empty_city).begin() as conn:
        user = acc.create_user(conn, "empty_admin", "admin")
        token, _ = acc.issue_token(conn, user["id"], app.config["TOKEN_PEPPER"])
    response = authed_client(app, token).get("/maps/grids")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "No grids are loaded" in html
    assert [u for u in page_resources(html) if is_external(u)] == []


@pytest.fixture
def server_url_for_empty_city():
    from helpers import dispose_database, fresh_database

    name = f"gis_test_maps_empty_{os.getpid()}"
    url = fresh_database(name)
    yield url
    dispose_database(url, name)


# --- the map builder on plain values (no Flask, no database) -------------------------------
def _square(x, y, d=0.01):
    return {"type": "Polygon", "coordinates": [[[x, y], [x + d, y], [x + d, y + d],
                                                [x, y + d], [x, y]]]}


def _unit(code, name, community, x, workers=()):
    return {"type": "Feature", "id": code, "geometry": _square(x, 39.9),
            "properties": {"code": code, "name": name, "level": "unit",
                           "parent_code": community, "building_count": 3,
                           "household_count": 1234, "workers": list(workers)}}


def test_grid_map_escapes_names_and_colours_by_community():
    evil = '<img src=x onerror="alert(1)"></script>'
    units = {"type": "FeatureCollection", "features": [
        _unit("11010100100101", evil, "11010100100100", 116.30,
              [{"name": evil, "role": "grid_admin", "phone": "13800000000"}]),
        _unit("11010100100201", "二号", "11010100100200", 116.32),
    ]}
    html = grid_map(units, {})
    assert evil not in html and "<img" not in html
    assert html.count("</script>") == html.count("<script")
    palette = get_layer("grids").style["palette"]
    assert palette[0] in html and palette[1] in html
    assert "L.tileLayer" not in html
    assert re.search(r"fitBounds\(\s*\[\[39\.9, 116\.3\], \[39\.91, 116\.33\]\]", html)


def test_helpers():
    assert community_colors(["b", "a", "c"], ["#1", "#2"]) == {"a": "#1", "b": "#2", "c": "#1"}
    assert bounds({"features": [{"geometry": {"type": "MultiPolygon", "coordinates": [
        [[[1, 2], [3, 2], [3, 5], [1, 2]]]]}}]}) == [[2, 1], [5, 3]]
    assert bounds({"features": []}) is None
    assert workers_html([]) == "—"
    text_ = workers_html([{"name": "张<三>", "role": "grid_admin", "phone": "138"}])
    assert "张&lt;三&gt;" in text_ and "网格员" in text_ and "tel:138" in text_


# --- a real browser, offline ----------------------------------------------------------------
@pytest.mark.browser
def test_map_renders_offline_in_browser(offline_page, live_server, engine, accounts):
    page = offline_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Anonymous → the login form; logging in (session cookie) lands on the map.
    page.goto(f"{live_server}/maps/grids")
    assert "/login" in page.url
    page.fill("#username", accounts["planner"]["user"]["username"])
    page.fill("#password", accounts["planner"]["password"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url.endswith("/maps/grids?") or page.url.endswith("/maps/grids")
    response = page.goto(f"{live_server}/maps/grids")
    assert response.status == 200
    page.wait_for_selector(".leaflet-container")
    page.wait_for_function("document.querySelectorAll('path.leaflet-interactive').length > 0")

    units = unit_codes(engine)
    polygons = page.locator("path.leaflet-interactive")
    assert polygons.count() >= len(units) > 0
    # Unit grids are filled with the palette colour of their community.
    palette = get_layer("grids").style["palette"]
    n_communities = len(community_codes(engine))
    fills = set(polygons.evaluate_all("ps => ps.map(p => p.getAttribute('fill'))"))
    assert fills == {palette[i % len(palette)] for i in range(n_communities)}
    # Layer control: units + the three outline levels.
    assert page.locator(".leaflet-control-layers-overlays label").count() == 4

    # Hover → tooltip with code and name; click → popup with the grid's details.
    target = polygons.nth(len(units) // 2)
    target.hover()
    page.wait_for_selector(".leaflet-tooltip")
    tooltip = page.locator(".leaflet-tooltip").inner_text()
    target.click()
    page.wait_for_selector(".leaflet-popup-content")
    popup = page.locator(".leaflet-popup-content").inner_text()
    code = re.search(r"\b\d{14,15}\b", popup).group(0)
    assert code in units and code in tooltip
    (name, buildings, households), = rows(engine, """
        SELECT g.name,
               (SELECT count(*) FROM buildings b WHERE b.grid_id = g.id),
               (SELECT count(*) FROM households h WHERE h.grid_id = g.id)
        FROM grids g WHERE g.code = :c AND g.valid_to IS NULL""", c=code)
    assert name in popup and name in tooltip
    for label in ("Code", "Name", "Workers", "Buildings", "Households"):
        assert label in popup
    shown = dict(line.split("\t", 1) for line in popup.splitlines() if "\t" in line)
    assert re.sub(r"\D", "", shown["Buildings"]) == str(buildings)  # toLocaleString: 1,234
    assert re.sub(r"\D", "", shown["Households"]) == str(households)
    workers = rows(engine, """
        SELECT w.name, w.phone FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
        WHERE wg.grid_code = :c AND w.active""", c=code)
    assert workers and all(n in popup and p in popup for n, p in workers)

    assert page.external_requests == []
    assert errors == []

"""Shared fixtures: a fresh PostGIS database per test session, the app, a live server and a
headless Debian chromium (Playwright) that refuses every request leaving this machine.

No mocks: the database is the project's embedded cluster (or DATABASE_URL's server).
"""
from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

import pytest
from werkzeug.serving import make_server

from helpers import dispose_database, fresh_database

from gis_server import create_app
from gis_server.db import engine_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="session")
def small_city():
    from gis_server.loaders import synthetic
    return synthetic.generate("small", seed=1)


@pytest.fixture(scope="session")
def database_url(small_city):
    name = f"gis_test_{os.getpid()}"
    url = fresh_database(name, small_city)
    yield url
    dispose_database(url, name)


@pytest.fixture(scope="session")
def app(database_url):
    return create_app({"TESTING": True, "DATABASE_URL": database_url})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def engine(database_url):
    return engine_for(database_url)


@pytest.fixture(scope="session")
def live_server(app):
    """The app on a real socket (threaded werkzeug) for browsers and HTTP clients."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def offline_page(browser):
    """A page that aborts (and records) any request to a host other than 127.0.0.1."""
    context = browser.new_context()
    page = context.new_page()
    page.external_requests = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            page.external_requests.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    yield page
    context.close()

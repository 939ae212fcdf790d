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

from helpers import authed_client, dispose_database, fresh_database

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


TEST_CONFIG = {"TESTING": True, "PUBLIC_RATE_LIMIT": "100000/minute",
               "LOGIN_RATE_LIMIT": "1000/minute"}


@pytest.fixture(scope="session")
def app(database_url):
    return create_app({**TEST_CONFIG, "DATABASE_URL": database_url})


@pytest.fixture(scope="session")
def accounts(app, database_url):
    """One account per role (+ a second community_admin), each with a bearer token.

    Scopes in the small city: street_admin → the first street, community_admin → the first
    community of that street, community_admin_b → the last community, grid_worker → the
    first unit grid.
    """
    from sqlalchemy import text

    from gis_server.core import accounts as acc
    from gis_server.models import ROLES

    made = {}
    with engine_for(database_url).begin() as conn:
        def first(level, order="ASC"):
            return conn.execute(text(
                f"SELECT code FROM grids WHERE level = :l AND valid_to IS NULL "
                f"ORDER BY code {order} LIMIT 1"), {"l": level}).scalar_one()
        scopes = {r: None for r in ROLES}
        scopes.update(street_admin=first("street"), community_admin=first("community"),
                      grid_worker=first("unit"))
        wanted = dict(scopes, community_admin_b=first("community", "DESC"))
        for name, scope in wanted.items():
            role = "community_admin" if name == "community_admin_b" else name
            user = acc.create_user(conn, f"test_{name}", role, scope,
                                   password=f"pw-{name}-0123456789")
            token, row = acc.issue_token(conn, user["id"], app.config["TOKEN_PEPPER"])
            made[name] = {"user": user, "token": token, "token_id": row["id"],
                          "scope": scope, "password": f"pw-{name}-0123456789"}
    return made


@pytest.fixture
def client(app, accounts):
    """A client authenticated as admin (whole city, personal data masked)."""
    return authed_client(app, accounts["admin"]["token"])


@pytest.fixture
def client_as(app, accounts):
    """``client_as("community_admin")`` → a client with that account's token."""
    return lambda name: authed_client(app, accounts[name]["token"] if name else None)


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

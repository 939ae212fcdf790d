"""Access control: every route × every role, scope isolation, de-identification, audit."""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import authed_client
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gis_server import create_app
from gis_server.access import (ACCESS, APP_KEY, DEVICE, HTML_PREFIXES, PERSONAL_DATA,
                               PUBLIC, permission_matrix)
from gis_server.core import accounts as acc
from gis_server.db import engine_for
from gis_server.models import ROLES

ROOT = Path(__file__).resolve().parents[1]
CALLERS = [None, *ROLES]  # None = anonymous


@pytest.fixture(scope="module")
def sample(engine, accounts):
    """Values for URL placeholders: objects inside every scoped caller's subtree."""
    unit = accounts["grid_worker"]["scope"]
    with engine.connect() as conn:
        building, household = conn.execute(text(
            "SELECT b.id, min(h.id) FROM buildings b JOIN grids u ON u.id = b.grid_id "
            "JOIN households h ON h.building_id = b.id "
            "WHERE u.code = :c GROUP BY b.id ORDER BY b.id LIMIT 1"), {"c": unit}).one()
    return {"code": unit, "building_id": str(building), "household_id": str(household),
            "filename": "vendor/leaflet/dist/leaflet.css",
            # incidents / Open311 (issue 6)
            "incident_id": "1", "fmt": "json", "service_code": "E0101",
            "service_request_id": "1", "token": "no-such-token",
            # live positions (issue 7): a worker's track (404 outside a scope is fine here)
            "worker_id": "1",
            # OGC API – Features and vector tiles (issue 8)
            "collection_id": "buildings", "feature_id": str(building), "layer": "buildings",
            "z": 0, "x": 0, "y": 0,
            # planning (issue 5): a plan that does not exist (404s; nothing is published)
            "plan_id": "999999"}


def route_cases(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def expected_status(endpoint: str, caller: str | None) -> str:
    rule = ACCESS[endpoint]
    if rule in (PUBLIC, DEVICE, APP_KEY):  # APP_KEY: a POST without api_key is a 400
        return "allowed"
    if caller is None:
        return "login" if endpoint.startswith(HTML_PREFIXES) else "401"
    return "allowed" if caller in rule else "403"


def test_every_route_has_an_access_rule(app):
    missing = {r.endpoint for r in app.url_map.iter_rules()} - set(ACCESS)
    assert missing == set(), f"routes without an access rule: {missing}"


def test_every_route_against_every_role(app, accounts, sample):
    checked = 0
    for rule, method in route_cases(app):
        url = rule.build(sample, append_unknown=False)[1] if rule.arguments else rule.rule
        for caller in CALLERS:
            client = authed_client(app, accounts[caller]["token"] if caller else None)
            response = client.open(url, method=method)
            want = expected_status(rule.endpoint, caller)
            where = f"{method} {url} as {caller or 'anonymous'}: {response.status_code}"
            if want == "allowed":
                assert response.status_code not in (401, 403), where
                assert response.status_code < 500, where
            elif want == "login":
                assert response.status_code == 302 and "/login" in response.location, where
            else:
                assert response.status_code == int(want), where
                assert response.is_json and response.json["error"] in (
                    "unauthorized", "forbidden"), where
                if want == "401":
                    assert response.headers["WWW-Authenticate"].startswith("Bearer"), where
            checked += 1
    assert checked >= len(ACCESS) * len(CALLERS) - len(CALLERS)


def test_unlisted_route_is_refused(database_url, accounts):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url})

    @app.get("/api/v1/forgotten")
    def forgotten():
        return {"secret": True}

    response = authed_client(app, accounts["admin"]["token"]).get("/api/v1/forgotten")
    assert response.status_code == 403 and "no access rule" in response.json["message"]


# -- tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize("header,reason", [
    (None, "missing"), ("Bearer", "malformed"), ("Basic dXNlcjpwdw==", "malformed"),
    ("Bearer nope", "malformed"), ("Bearer gis_" + "x" * 43, "unknown"),
])
def test_bad_tokens_are_401(app, header, reason):
    client = app.test_client()
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/grids?level=street", headers=headers)
    assert response.status_code == 401
    assert response.json["reason"] == reason
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gis-server"'


def test_expired_and_revoked_tokens_are_401(app, engine, accounts):
    pepper = app.config["TOKEN_PEPPER"]
    uid = accounts["planner"]["user"]["id"]
    with engine.begin() as conn:
        expired, _ = acc.issue_token(conn, uid, pepper, expires_in=timedelta(seconds=-1))
        revoked, row = acc.issue_token(conn, uid, pepper)
    assert authed_client(app, revoked).get("/api/v1/me").status_code == 200
    with engine.begin() as conn:
        acc.revoke_token(conn, row["id"])
    for token, reason in ((expired, "expired"), (revoked, "revoked")):
        response = authed_client(app, token).get("/api/v1/me")
        assert response.status_code == 401 and response.json["reason"] == reason


def test_tokens_are_stored_hashed(engine, accounts):
    token = accounts["analyst"]["token"]
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash, prefix FROM api_tokens WHERE id = :i"),
                              {"i": accounts["analyst"]["token_id"]}).one()
    assert token not in stored.token_hash and len(stored.token_hash) == 64
    assert token.startswith(stored.prefix)


# -- scope ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_community(engine, accounts):
    """A household and building in community B, outside community_admin's community A."""
    with engine.connect() as conn:
        return conn.execute(text("""
            SELECT h.id AS household_id, b.id AS building_id, u.code AS unit_code,
                   ST_XMin(b.anchor) AS x, ST_YMin(b.anchor) AS y
            FROM households h JOIN buildings b ON b.id = h.building_id
            JOIN grids u ON u.id = h.grid_id
            WHERE left(u.code, 12) = left(:b, 12) ORDER BY h.id LIMIT 1
        """), {"b": accounts["community_admin_b"]["scope"]}).one()


def test_community_admin_cannot_see_another_communitys_households(client_as, other_community,
                                                                   accounts):
    a = client_as("community_admin")
    # by id
    assert a.get(f"/api/v1/households/{other_community.household_id}").status_code == 404
    assert a.get(f"/api/v1/buildings/{other_community.building_id}").status_code == 404
    assert a.get(f"/api/v1/grids/{other_community.unit_code}").status_code == 404
    # by bbox around the other household's building
    x, y = other_community.x, other_community.y
    bbox = f"{x - 1e-4},{y - 1e-4},{x + 1e-4},{y + 1e-4}"
    assert a.get(f"/api/v1/households?bbox={bbox}").json["households"] == []
    assert a.get(f"/api/v1/buildings?bbox={bbox}").json["features"] == []
    # by listing the other community
    listing = a.get(f"/api/v1/households?grid={accounts['community_admin_b']['scope']}").json
    assert listing["households"] == [] and listing["numberMatched"] == 0
    # ...while the owner of community B sees it, and A sees its own
    b = client_as("community_admin_b")
    assert b.get(f"/api/v1/households/{other_community.household_id}").status_code == 200
    assert b.get(f"/api/v1/households?bbox={bbox}").json["numberMatched"] >= 1
    own = a.get(f"/api/v1/households?grid={accounts['community_admin']['scope']}").json
    assert own["numberMatched"] > 0


def test_scoped_listings_match_the_subtree(client_as, engine, accounts):
    for name in ("street_admin", "community_admin", "grid_worker"):
        prefix = acc.scope_prefix(accounts[name]["scope"])
        with engine.connect() as conn:
            expected = conn.execute(text(
                "SELECT count(*) FROM grids WHERE level = 'unit' AND valid_to IS NULL "
                "AND left(code, length(:p)) = :p"), {"p": prefix}).scalar_one()
        units = client_as(name).get("/api/v1/grids?level=unit").json["features"]
        assert len(units) == expected > 0
        assert all(f["id"].startswith(prefix) for f in units)
    everyone = client_as("command_center").get("/api/v1/grids?level=unit").json["features"]
    assert len(everyone) > len(client_as("street_admin").get(
        "/api/v1/grids?level=unit").json["features"])


# -- personal data ---------------------------------------------------------------------------
def personal_values(engine, building_id) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("""
            SELECT p.name, p.id_number, p.phone, h.head_name
            FROM persons p JOIN households h ON h.id = p.household_id
            WHERE h.building_id = :b"""), {"b": building_id}).all()
    # (room numbers such as "101" are checked by key: as text they occur inside grid codes)
    return {v for r in rows for v in r if v and len(v) >= 2}


PERSONAL_KEYS = {"id_number", "phone", "head_name", "room", "birth_date"}


def keys_in(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_in(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_in(v)}
    return set()


def test_analyst_responses_contain_no_personal_field(client_as, engine, sample):
    analyst = client_as("analyst")
    bid = int(sample["building_id"])
    secrets_ = personal_values(engine, bid)
    urls = [f"/api/v1/buildings/{bid}", f"/api/v1/households/{sample['household_id']}",
            f"/api/v1/households?grid={sample['code']}", "/api/v1/grids?level=unit&stats=true",
            f"/api/v1/grids/{sample['code']}", "/maps/grids"]
    for url in urls:
        response = analyst.get(url)
        assert response.status_code == 200, url
        body = response.get_data(as_text=True)
        leaked = [s for s in secrets_ if s in body]
        assert leaked == [], (url, leaked[:3])
        if response.is_json:
            data = response.json
            assert keys_in(data) & PERSONAL_KEYS == set(), url
            members = [m for h in data.get("properties", data).get("households", [data])
                       for m in h.get("members", [])]
            assert all("name" not in m for m in members), url
    workers = analyst.get("/api/v1/grids?level=unit&stats=true").json["features"][0][
        "properties"]["workers"]
    assert workers and all(set(w) == {"role"} for w in workers)


def test_masked_roles_see_masks(client_as, sample):
    body = client_as("planner").get(f"/api/v1/households/{sample['household_id']}").json
    assert body["personal_data"] == "masked"
    for m in body["members"]:
        assert re.fullmatch(r"\d{3}\*{11}[\dX]{4}", m["id_number"])  # 110***********1234
        assert m["name"][1:] == "*" * (len(m["name"]) - 1)


def audit_count(engine, **where) -> int:
    clause = " AND ".join(f"{k} = :{k}" for k in where) or "true"
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM audit_log WHERE {clause}"),
                            where).scalar_one()


def test_each_unmasked_read_writes_one_audit_row(client_as, engine, sample, accounts):
    worker = client_as("grid_worker")
    username = accounts["grid_worker"]["user"]["username"]
    before = audit_count(engine, username=username, action="read_personal")
    body = worker.get(f"/api/v1/buildings/{sample['building_id']}",
                      environ_base={"REMOTE_ADDR": "10.1.2.3"}).json
    assert body["properties"]["personal_data"] == "unmasked"
    assert audit_count(engine, username=username, action="read_personal") == before + 1
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT * FROM audit_log WHERE username = :u ORDER BY id DESC LIMIT 1"),
            {"u": username}).one()
    assert (row.role, row.object_type, row.object_id) == (
        "grid_worker", "building", sample["building_id"])
    assert row.remote_addr == "10.1.2.3" and row.endpoint == "buildings.building_detail"
    worker.get(f"/api/v1/households/{sample['household_id']}")
    assert audit_count(engine, username=username, action="read_personal") == before + 2
    # masked and de-identified reads are not personal-data reads
    planner = accounts["planner"]["user"]["username"]
    client_as("planner").get(f"/api/v1/buildings/{sample['building_id']}")
    client_as("analyst").get(f"/api/v1/buildings/{sample['building_id']}")
    assert audit_count(engine, username=planner, action="read_personal") == 0


def test_audit_log_is_append_only_and_admin_readable(engine, client_as):
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET action = 'x'"))
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log"))
    entries = client_as("admin").get("/api/v1/audit?limit=5").json["entries"]
    assert isinstance(entries, list)
    assert client_as("command_center").get("/api/v1/audit").status_code == 403
    assert client_as("admin").get("/api/v1/audit?limit=x").json["field"] == "limit"


# -- browser sessions -------------------------------------------------------------------------
def login_page(client, base_url="http://localhost"):
    html = client.get("/login", base_url=base_url).get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_login_session_csrf_and_logout(database_url, accounts):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url,
                      "PUBLIC_RATE_LIMIT": "1000/minute"})
    client = app.test_client()
    creds = accounts["street_admin"]
    no_csrf = client.post("/login", data={"username": creds["user"]["username"],
                                          "password": creds["password"]})
    assert no_csrf.status_code == 400
    token = login_page(client)
    wrong = client.post("/login", data={"username": creds["user"]["username"],
                                        "password": "wrong-password!", "csrf_token": token})
    assert wrong.status_code == 401
    ok = client.post("/login?next=/maps/grids", data={
        "username": creds["user"]["username"], "password": creds["password"],
        "csrf_token": login_page(client)})
    assert ok.status_code == 302 and ok.location.endswith("/maps/grids")
    with engine_for(database_url).connect() as conn:
        actions = conn.execute(text(
            "SELECT action FROM audit_log WHERE detail->>'username' = :u ORDER BY id"),
            {"u": creds["user"]["username"]}).scalars().all()
    assert actions[-2:] == ["login_failed", "login"]
    cookie = ok.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # the Secure cookie is only sent over https: the test client follows that rule
    https = app.test_client()
    https.set_cookie("session", client.get_cookie("session").value, domain="localhost",
                     secure=True)
    assert https.get("/maps/grids", base_url="https://localhost").status_code == 200
    assert https.get("/api/v1/me", base_url="https://localhost").json["role"] == "street_admin"
    assert https.post("/logout", base_url="https://localhost").status_code == 400  # no CSRF
    assert https.get("/maps/grids", base_url="https://localhost").status_code == 200
    out = https.post("/logout", base_url="https://localhost",
                     data={"csrf_token": login_page(https, "https://localhost")})
    assert out.status_code == 302
    after = https.get("/maps/grids", base_url="https://localhost")
    assert after.status_code == 302 and "/login" in after.location


def test_open_redirect_is_refused(database_url, accounts):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url})
    client = app.test_client()
    creds = accounts["planner"]
    response = client.post("/login?next=//evil.example/x", data={
        "username": creds["user"]["username"], "password": creds["password"],
        "csrf_token": login_page(client)})
    assert response.status_code == 302 and response.location == "/maps/grids"


def test_login_brute_force_is_throttled(database_url):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url,
                      "LOGIN_RATE_LIMIT": "3/minute", "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    codes = [client.post("/login", data={"username": "x", "password": "y" * 10}).status_code
             for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3] == 429
    last = client.post("/login", data={"username": "x", "password": "y" * 10})
    assert last.status_code == 429 and int(last.headers["Retry-After"]) > 0


def test_public_routes_are_rate_limited(database_url):
    app = create_app({"TESTING": True, "DATABASE_URL": database_url,
                      "PUBLIC_RATE_LIMIT": "3/minute"})
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.8.8.8"
    codes = [client.get("/api/v1/locate?lon=0&lat=0").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    limited = client.get("/api/v1/locate?lon=0&lat=0")
    assert limited.is_json and int(limited.headers["Retry-After"]) > 0
    # another address has its own budget
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.8.8.9"
    assert other.get("/api/v1/locate?lon=0&lat=0").status_code == 404


def test_no_stack_trace_reaches_a_client(database_url, accounts, monkeypatch):
    app = create_app({"TESTING": False, "DATABASE_URL": database_url})

    @app.get("/api/v1/boom")
    def boom():
        raise RuntimeError("SELECT secret FROM internals")

    monkeypatch.setitem(ACCESS, "boom", PUBLIC)
    response = app.test_client().get("/api/v1/boom")
    assert response.status_code == 500
    assert response.json == {"error": "internal_error", "message": "internal server error"}


# -- the rest -----------------------------------------------------------------------------------
def test_permission_doc_is_generated_from_the_table():
    assert (ROOT / "docs" / "PERMISSIONS.md").read_text(encoding="utf-8") == permission_matrix()
    assert set(PERSONAL_DATA) == set(ROLES)


def test_row_level_security_filters_in_sql(engine, accounts):
    from gis_server.db import scope_connection
    prefix = acc.scope_prefix(accounts["community_admin"]["scope"])
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM persons")).scalar_one()
        expected = conn.execute(text(
            "SELECT count(*) FROM persons p JOIN households h ON h.id = p.household_id "
            "JOIN grids u ON u.id = h.grid_id WHERE left(u.code, 12) = :p"),
            {"p": prefix}).scalar_one()
        conn.commit()
        scope_connection(conn, prefix)
        visible = conn.execute(text("SELECT count(*) FROM persons")).scalar_one()
        conn.commit()  # the scope is transaction-local: gone with the commit
        assert conn.execute(text("SELECT count(*) FROM persons")).scalar_one() == total
        conn.commit()
        scope_connection(conn, "0")  # a scope matching nothing
        assert conn.execute(text("SELECT count(*) FROM buildings")).scalar_one() == 0
        conn.rollback()
        # gis_app with no (or a reset) scope sees nothing: fail closed
        conn.execute(text("SET LOCAL ROLE gis_app"))
        assert conn.execute(text("SELECT count(*) FROM buildings")).scalar_one() == 0
        conn.rollback()
        conn.execute(text("SELECT set_config('role', 'gis_app', true), "
                          "set_config('gis.scope', '', true)"))
        assert conn.execute(text("SELECT count(*) FROM persons")).scalar_one() == 0
        conn.rollback()
    assert 0 < visible == expected < total
    with engine.connect() as conn:  # back from the pool: the owner again, sees everything
        assert conn.execute(text("SELECT count(*) FROM persons")).scalar_one() == total


def test_cli_users_tokens_audit(database_url, monkeypatch, accounts):
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    created = runner.invoke(main_cli(), ["users", "create", "cli_analyst", "--role", "analyst"])
    assert created.exit_code == 0, created.output
    token = re.search(r"token \(shown once\): (\S+)", created.output).group(1)
    app = create_app({"TESTING": True, "DATABASE_URL": database_url})
    assert authed_client(app, token).get("/api/v1/me").json["role"] == "analyst"
    bad_scope = runner.invoke(main_cli(), ["users", "create", "x1", "--role", "street_admin"])
    assert bad_scope.exit_code != 0 and "scope" in bad_scope.output
    listing = runner.invoke(main_cli(), ["users", "list"]).output
    assert "cli_analyst" in listing
    tokens = runner.invoke(main_cli(), ["tokens", "list", "--user", "cli_analyst"]).output
    token_id = int(tokens.split()[0])
    assert runner.invoke(main_cli(), ["tokens", "revoke", str(token_id)]).exit_code == 0
    assert authed_client(app, token).get("/api/v1/me").status_code == 401
    tail = runner.invoke(main_cli(), ["audit", "tail", "-n", "5"]).output
    assert "create_user" in tail and "revoke_token" in tail
    doc = runner.invoke(main_cli(), ["docs", "permissions"]).output
    assert doc == permission_matrix()


def main_cli():
    from gis_server.cli import main
    return main

"""Incidents: intake, routing (against shapely), the closed loop, deadlines, bad input."""
from __future__ import annotations

import io
import threading
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import shapely
from sqlalchemy import text

from gis_server.core import incidents as core
from gis_server.core.accounts import Principal
from gis_server.core.workcalendar import WorkCalendar, from_dict

SH = ZoneInfo("Asia/Shanghai")
SYSTEM = Principal(user_id=None, username="test-system", role="admin")


@pytest.fixture(scope="module")
def units(engine):
    """Current unit grids: codes and shapely polygons (an independent routing oracle)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT code, ST_AsBinary(geom) FROM grids "
                                 "WHERE level = 'unit' AND valid_to IS NULL ORDER BY code")).all()
    return [r[0] for r in rows], shapely.from_wkb([bytes(r[1]) for r in rows])


def oracle(units, lon, lat) -> list[str]:
    codes, geoms = units
    p = shapely.Point(lon, lat)
    return sorted(c for c, g in zip(codes, geoms) if g.intersects(p))


def post(client, **body):
    body.setdefault("category", "E0101")
    body.setdefault("description", "垃圾堆放 garbage pile")
    return client.post("/api/v1/incidents", json=body)


def point_in(units, code) -> tuple[float, float]:
    codes, geoms = units
    p = geoms[codes.index(code)].point_on_surface()
    return p.x, p.y


# -- intake and routing ---------------------------------------------------------------------
def quiet_unit(engine, units) -> str:
    """A unit grid none of whose workers has a fresh live position (then the grid's
    administrator is the assignee), whatever other test modules have posted before."""
    from gis_server.core.incidents import POSITION_FRESH
    with engine.connect() as conn:
        live = {code for (code,) in conn.execute(text(
            "SELECT DISTINCT wg.grid_code FROM worker_grids wg JOIN latest_positions lp "
            "ON lp.worker_id = wg.worker_id WHERE lp.recorded_at > now() - :fresh"),
            {"fresh": POSITION_FRESH})}
    return next(code for code in units[0][3:] if code not in live)


def test_create_answers_grid_department_assignee_deadline(client, units, engine):
    code = quiet_unit(engine, units)
    lon, lat = point_in(units, code)
    r = post(client, lon=lon, lat=lat, source="patrol", reporter="王小明",
             reporter_contact="13800001111")
    assert r.status_code == 201, r.json
    body = r.json
    assert body["grid"]["code"] == code
    assert body["status"] == "reported" and body["department"]["code"] == "sanitation"
    assert body["assignee"]["role"] == "grid_admin"
    assert body["time_limit"] == "4h" and body["due_at"] is None
    assert datetime.fromisoformat(body["deadline_if_dispatched_now"]) > datetime.now(timezone.utc)
    assert r.headers["Location"] == f"/api/v1/incidents/{body['id']}"
    assert [e["action"] for e in body["timeline"]] == ["report"]
    # admin sees personal data masked
    assert body["reporter"] == "王**" and body["reporter_contact"] == "138****1111"
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT count(*) FROM audit_log WHERE action = "
                                  "'create_incident' AND object_id = :i"),
                             {"i": str(body["id"])}).scalar_one()
    assert audit == 1


def test_random_points_route_like_shapely(client, units, engine):
    codes, geoms = units
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    rng = np.random.default_rng(7)
    inside = 0
    for lon, lat in zip(rng.uniform(minx, maxx, 40), rng.uniform(miny, maxy, 40)):
        want = oracle(units, lon, lat)
        r = post(client, lon=lon, lat=lat)
        if want:
            inside += 1
            assert r.status_code == 201, r.json
            assert r.json["grid"]["code"] == want[0]
        else:  # outside every grid: the nearest within 200 m, else 422
            d = min(shapely.distance(g, shapely.Point(lon, lat)) for g in geoms) * 111_000
            if r.status_code == 201:
                assert r.json["flags"]["fallback"] is True and d < 400
            else:
                assert r.status_code == 422 and r.json["error"] == "not_covered"
    assert inside > 20


def test_shared_vertex_goes_to_smallest_code_and_is_flagged(client, units):
    codes, geoms = units
    for code, g in zip(codes, geoms):
        for x, y in list(g.geoms[0].exterior.coords if g.geom_type == "MultiPolygon"
                         else g.exterior.coords):
            owners = oracle(units, x, y)
            if len(owners) >= 2:
                r = post(client, lon=x, lat=y)
                assert r.status_code == 201
                assert r.json["grid"]["code"] == owners[0]
                assert r.json["flags"]["on_boundary"] is True
                assert sorted(r.json["flags"]["candidates"]) == owners[1:]
                return
    pytest.fail("no shared vertex found")


def test_outside_points_fall_back_or_422(client, units):
    codes, geoms = units
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    y = (miny + maxy) / 2
    x = minx - 0.0008  # ~70 m west of the city
    nearest = codes[int(np.argmin(shapely.distance(geoms, shapely.Point(x, y))))]
    r = post(client, lon=x, lat=y)
    assert r.status_code == 201, r.json
    assert r.json["grid"]["code"] == nearest
    assert r.json["flags"]["fallback"] is True
    assert 30 < r.json["flags"]["fallback_distance_m"] < 200
    far = post(client, lon=minx - 0.05, lat=y)
    assert far.status_code == 422 and far.json["error"] == "not_covered"


def test_building_and_address_locations(client, engine):
    with engine.connect() as conn:
        b = conn.execute(text("SELECT b.id, b.address, u.code FROM buildings b "
                              "JOIN grids u ON u.id = b.grid_id WHERE b.address IS NOT NULL "
                              "ORDER BY b.id LIMIT 1")).one()
        unique = conn.execute(text("SELECT address FROM buildings WHERE address IS NOT NULL "
                                   "GROUP BY address HAVING count(*) = 1 LIMIT 1")).scalar_one()
    r = post(client, building_id=b.id)
    assert r.status_code == 201 and r.json["grid"]["code"] == b.code
    r = post(client, address=unique)
    assert r.status_code == 201, r.json
    assert post(client, address="no such street 999").json["field"] == "address"


def test_duplicate_within_50m_is_proposed(client, units):
    lon, lat = point_in(units, units[0][5])
    first = post(client, category="E0403", lon=lon, lat=lat).json
    near = post(client, category="E0403", lon=lon + 0.0002, lat=lat).json  # ~17 m
    other_cat = post(client, category="E0401", lon=lon, lat=lat).json
    far = post(client, category="E0403", lon=lon + 0.002, lat=lat).json  # ~170 m
    assert first["id"] in [d["id"] for d in near["possible_duplicates"]]
    assert first["id"] not in [d["id"] for d in other_cat["possible_duplicates"]]
    assert first["id"] not in [d["id"] for d in far["possible_duplicates"]]


@pytest.mark.parametrize("body,field,status", [
    ({"category": "NOPE"}, "category", 400),
    ({"category": None}, "category", 400),
    ({"lon": 200, "lat": 39.9}, "lon", 400),
    ({"lon": 116.3, "lat": -95}, "lat", 400),
    ({"lon": "x", "lat": 39.9}, "lon", 400),
    ({"lon": None, "lat": None}, "lon", 400),
    ({"description": "x" * 4001}, "description", 400),
    ({"description": ""}, "description", 400),
    ({"source": "pigeon"}, "source", 400),
    ({"category": "P0201", "attributes": {"size": "huge"}}, "attributes.size", 400),
    ({"category": "P0201"}, "attributes.size", 400),
    ({"category": "P0201", "attributes": {"size": "small", "x": 1}}, "attributes.x", 400),
])
def test_bad_input_names_the_field(client, units, engine, body, field, status):
    lon, lat = point_in(units, units[0][0])
    full = {"category": "E0101", "description": "d", "lon": lon, "lat": lat, **body}
    if full["lon"] is None:
        del full["lon"], full["lat"]
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM incidents")).scalar_one()
    r = client.post("/api/v1/incidents", json=full)
    assert r.status_code == status and r.json["field"] == field, r.json
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents")).scalar_one() == before


def test_malformed_json_is_400(client):
    r = client.post("/api/v1/incidents", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.json["field"] == "body"
    r = client.post("/api/v1/incidents", json=[1, 2])
    assert r.status_code == 400 and r.json["field"] == "body"


def _png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_photo_upload_is_stored_with_its_hash(client, units, tmp_path, monkeypatch):
    import hashlib
    monkeypatch.setenv("GIS_UPLOAD_DIR", str(tmp_path))
    lon, lat = point_in(units, units[0][1])
    png = _png()
    form = {"category": "E0101", "description": "with photo", "lon": str(lon),
            "lat": str(lat), "photo": (io.BytesIO(png), "a.png")}
    r = client.post("/api/v1/incidents", data=form, content_type="multipart/form-data")
    assert r.status_code == 201, r.json
    sha = hashlib.sha256(png).hexdigest()
    assert r.json["photo"]["sha256"] == sha
    stored = tmp_path / "incidents" / sha[:2] / f"{sha}.png"
    assert stored.read_bytes() == png
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temp file left
    # not an image → 400; too large → 413; neither leaves a row or a file behind
    bad = dict(form, photo=(io.BytesIO(b"%PDF-1.4 not an image"), "a.jpg"))
    r = client.post("/api/v1/incidents", data=bad, content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["field"] == "photo"
    monkeypatch.setenv("GIS_MAX_PHOTO_BYTES", "100")
    big = dict(form, photo=(io.BytesIO(png + b"\0" * 200), "b.png"))
    r = client.post("/api/v1/incidents", data=big, content_type="multipart/form-data")
    assert r.status_code == 413 and r.json["field"] == "photo"
    # a photo with an invalid incident: nothing written
    monkeypatch.setenv("GIS_MAX_PHOTO_BYTES", "1000000")
    other = _png() + b""
    bad_cat = dict(form, category="NOPE", photo=(io.BytesIO(other[:-1] + b"\x01"), "c.png"))
    r = client.post("/api/v1/incidents", data=bad_cat, content_type="multipart/form-data")
    assert r.status_code == 400
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == [stored]


def test_intake_roles(client_as, units):
    lon, lat = point_in(units, units[0][0])
    for role, want in (("grid_worker", 201), ("command_center", 201), ("planner", 403),
                       ("analyst", 403), ("reporter", 403), (None, 401)):
        assert post(client_as(role), lon=lon, lat=lat).status_code == want, role


def test_intake_body_is_the_detail(client_as, units, accounts, engine):
    """The 201 body is built from the INSERT's own row (nothing is read back): it must be
    what GET answers, for every personal-data mode, with flags, timeline and timestamps."""
    codes, geoms = units
    # a vertex shared by two grids: flags on_boundary + candidates
    x, y = next((x, y) for g in geoms
                for x, y in (g.geoms[0].exterior.coords if g.geom_type == "MultiPolygon"
                             else g.exterior.coords) if len(oracle(units, x, y)) >= 2)
    for role in ("command_center", "admin"):
        c = client_as(role)
        first = post(c, lon=x, lat=y, reporter="王小明", reporter_contact="13800001111",
                     address="某路1号", attributes={}, media_url="https://example.org/a.jpg")
        assert first.status_code == 201, first.json
        dup = post(c, lon=x, lat=y)
        for r in (first, dup):
            body = r.json
            got = c.get(f"/api/v1/incidents/{body['id']}")
            assert got.status_code == 200
            extra = {k: body.pop(k) for k in ("deadline_if_dispatched_now",
                                              "possible_duplicates")}
            assert body == got.json, role
            assert r.headers["ETag"] == got.headers["ETag"] == '"1"'
            assert extra["possible_duplicates"] == body["flags"].get("possible_duplicates",
                                                                     [])
        assert first.json["flags"]["on_boundary"] is True
        assert first.json["id"] in [d["id"] for d in dup.json["flags"]["possible_duplicates"]]
        assert dup.json["timeline"][0]["data"]["on_boundary"] is True
    with engine.connect() as conn:
        row = conn.execute(text("SELECT username, role, endpoint, detail FROM audit_log "
                                "WHERE action = 'create_incident' AND object_id = :i"),
                           {"i": str(dup.json["id"])}).one()
    assert row.username == accounts["admin"]["user"]["username"] and row.role == "admin"
    assert row.endpoint == "incidents.create_incident"
    assert row.detail == {"category": "E0101", "source": "patrol"}


def test_owner_autocommit_then_scoped_again(app, accounts):
    """db.owner_autocommit(): the block runs as the owner in autocommit; afterwards the
    request connection's transactions are scoped (gis_app, the caller's scope) again."""
    from flask import g

    from gis_server.db import get_db, owner_autocommit
    who = Principal(user_id=None, username="t", role="grid_worker",
                    scope_code=accounts["grid_worker"]["scope"])
    with app.test_request_context("/"):
        g.principal = who
        with owner_autocommit() as conn:
            assert conn.execute(text("SELECT current_user <> 'gis_app'")).scalar() is True
            assert conn.connection.driver_connection.autocommit is True
        conn = get_db()
        assert conn.connection.driver_connection.autocommit is False
        row = conn.execute(text("SELECT current_user, current_setting('gis.scope', true)")).one()
        assert tuple(row) == ("gis_app", "scope:" + who.scope)
        with pytest.raises(RuntimeError, match="commit or roll back"):
            owner_autocommit().__enter__()  # (refused on entry, before any work)
        conn.rollback()


# -- the closed loop --------------------------------------------------------------------------
def make(engine, app, units, state: str, code_index: int = 0) -> int:
    """An incident driven to ``state`` through the core functions (setup for HTTP tests)."""
    path = {"reported": [], "filed": ["file"], "rejected": ["reject"],
            "dispatched": ["file", "dispatch"], "handling": ["file", "dispatch", "start"],
            "feedback": ["file", "dispatch", "start", "feedback"],
            "closed": ["file", "dispatch", "start", "feedback", "verify"],
            "evaluated": ["file", "dispatch", "start", "feedback", "verify", "evaluate"],
            "parked": ["file", "park"]}[state]
    lon, lat = point_in(units, units[0][code_index])
    with app.app_context(), engine.begin() as conn:
        index = app.extensions["grid_index"].get(engine)
        iid = core.create_incident(conn, index, SYSTEM, category="E0101", description="t",
                                   lon=lon, lat=lat)
        for action in path:
            core.apply_action(conn, SYSTEM, iid, legal_body(action), WorkCalendar())
    return iid


def legal_body(action: str) -> dict:
    body = {"action": action, "reason": "test reason", "note": "n"}
    if action in ("postpone",):
        body.update(amount=2, unit="d")
    if action == "extend":
        body.update(decision="request", amount=1, unit="d")
    if action == "evaluate":
        body["score"] = 4
    return body


def test_every_legal_and_illegal_transition(client, engine, app, units):
    for state in core.STATES:
        for action, rule in core.RULES.items():
            iid = make(engine, app, units, state)
            r = client.post(f"/api/v1/incidents/{iid}/actions", json=legal_body(action))
            if state in rule.from_states:
                assert r.status_code == 200, (state, action, r.json)
                want = rule.to_state or state
                assert r.json["incident"]["status"] == want, (state, action)
                last = r.json["incident"]["timeline"][-1]
                assert (last["action"], last["from"], last["to"]) == (action, state, want)
                assert last["actor"] == "test_admin"
            else:
                assert r.status_code == 409, (state, action, r.json)
                allowed = core.allowed_actions(state, "admin")
                assert r.json["allowed"] == allowed and action not in allowed
                assert r.json["state"] == state


def test_full_loop_with_rework_and_deadline(client, engine, app, units):
    iid = make(engine, app, units, "reported", 2)
    steps = ["file", "dispatch", "start", "feedback", "rework", "feedback", "verify",
             "evaluate"]
    for action in steps:
        r = client.post(f"/api/v1/incidents/{iid}/actions", json=legal_body(action))
        assert r.status_code == 200, (action, r.json)
    inc = client.get(f"/api/v1/incidents/{iid}").json
    assert inc["status"] == "evaluated" and inc["rework_count"] == 1
    assert inc["evaluation"] == 4
    dispatched = datetime.fromisoformat(inc["dispatched_at"])
    from gis_server.core import workcalendar
    assert datetime.fromisoformat(inc["due_at"]) == workcalendar.load().add(dispatched, 4, "h")
    assert [e["action"] for e in inc["timeline"]] == ["report"] + steps
    with engine.connect() as conn:
        events = conn.execute(text("SELECT count(*) FROM incident_events WHERE "
                                   "incident_id = :i"), {"i": iid}).scalar_one()
        audits = conn.execute(text("SELECT count(*) FROM audit_log WHERE object_type = "
                                   "'incident' AND object_id = :i AND action LIKE "
                                   "'incident_%'"), {"i": str(iid)}).scalar_one()
    assert events == len(steps) + 1 and audits == len(steps)


def test_return_extend_postpone_escalate(client, client_as, engine, app, units):
    iid = make(engine, app, units, "handling")
    url = f"/api/v1/incidents/{iid}/actions"
    assert client.post(url, json={"action": "return"}).json["field"] == "reason"
    r = client.post(url, json={"action": "return", "reason": "not ours"})
    assert r.json["incident"]["status"] == "filed" and r.json["incident"]["due_at"] is None
    assert r.json["incident"]["return_count"] == 1
    # re-dispatch must name a department now
    assert client.post(url, json={"action": "dispatch"}).json["field"] == "department"
    r = client.post(url, json={"action": "dispatch", "department": "municipal"})
    assert r.json["incident"]["department"]["code"] == "municipal"
    due = datetime.fromisoformat(r.json["incident"]["due_at"])
    # extension: request by a handler, approval by a dispatcher
    r = client.post(url, json={"action": "extend", "decision": "request", "amount": 1,
                               "unit": "d", "reason": "parts on order"})
    assert r.status_code == 200 and r.json["incident"]["extension_request"]["amount"] == 1
    again = client.post(url, json={"action": "extend", "decision": "request", "amount": 1,
                                   "unit": "d", "reason": "x"})
    assert again.status_code == 409
    r = client.post(url, json={"action": "extend", "decision": "approve"})
    inc = r.json["incident"]
    assert inc["extension_count"] == 1 and inc["extension_request"] is None
    from gis_server.core import workcalendar
    assert datetime.fromisoformat(inc["due_at"]) == workcalendar.load().add(due, 1, "d")
    # postpone (command centre)
    r = client_as("command_center").post(url, json={"action": "postpone", "amount": 2,
                                                     "unit": "d", "reason": "weather"})
    assert r.status_code == 200 and r.json["incident"]["postponed"] is True
    # escalation: one level at a time, micro → small → big, then 409
    r = client.post(url, json={"action": "escalate"})
    assert r.json["incident"]["circulation"] == "small"
    r = client.post(url, json={"action": "escalate"})
    assert r.json["incident"]["circulation"] == "big"
    r = client.post(url, json={"action": "escalate"})
    assert r.status_code == 409 and "big" in r.json["message"]


def test_roles_per_action(client_as, engine, app, accounts, units):
    # the grid worker's own unit grid (units[0][0] is the first unit: the worker's scope)
    assert units[0][0] == accounts["grid_worker"]["scope"]
    iid = make(engine, app, units, "filed")
    url = f"/api/v1/incidents/{iid}/actions"
    for role in ("grid_worker", "community_admin"):
        r = client_as(role).post(url, json={"action": "dispatch"})
        assert r.status_code == 403 and "dispatch" in r.json["message"], role
    r = client_as("street_admin").post(url, json={"action": "dispatch"})
    assert r.status_code == 200
    r = client_as("grid_worker").post(url, json={"action": "start"})
    assert r.status_code == 200
    r = client_as("grid_worker").post(url, json={"action": "feedback"})
    assert r.status_code == 200
    r = client_as("grid_worker").post(url, json={"action": "verify"})
    assert r.status_code == 403  # the handler does not verify its own work
    assert client_as("community_admin").post(url, json={"action": "verify"}).status_code == 200
    # community admin may escalate only from micro
    iid = make(engine, app, units, "dispatched")
    url = f"/api/v1/incidents/{iid}/actions"
    assert client_as("community_admin").post(url, json={"action": "escalate"}).status_code == 200
    assert client_as("community_admin").post(url, json={"action": "escalate"}).status_code == 403
    assert client_as("street_admin").post(url, json={"action": "escalate"}).status_code == 200


def test_scope_hides_other_communities(client_as, engine, app, units, accounts):
    iid = make(engine, app, units, "filed")  # in community A (the first unit)
    b = client_as("community_admin_b")
    assert b.get(f"/api/v1/incidents/{iid}").status_code == 404
    assert b.post(f"/api/v1/incidents/{iid}/actions",
                  json={"action": "park", "reason": "x"}).status_code == 404
    ids = [f["id"] for f in b.get("/api/v1/incidents?limit=10000").json["features"]]
    assert iid not in ids
    assert client_as("community_admin").get(f"/api/v1/incidents/{iid}").status_code == 200


def test_concurrent_actions_cannot_both_apply(client, app, engine, units, accounts):
    from helpers import authed_client
    iid = make(engine, app, units, "feedback")
    url = f"/api/v1/incidents/{iid}/actions"
    results = []
    barrier = threading.Barrier(2)

    def act(action):
        c = authed_client(app, accounts["command_center"]["token"])
        barrier.wait()
        results.append((action, c.post(url, json={"action": action, "reason": "r"})))

    threads = [threading.Thread(target=act, args=(a,)) for a in ("verify", "rework")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for _, r in results)
    assert codes == [200, 409], [(a, r.json) for a, r in results]
    inc = client.get(f"/api/v1/incidents/{iid}").json
    assert len([e for e in inc["timeline"] if e["action"] in ("verify", "rework")]) == 1
    # If-Match: a stale version is refused with 412, the current one applies
    iid = make(engine, app, units, "reported")
    url = f"/api/v1/incidents/{iid}/actions"
    etag = client.get(f"/api/v1/incidents/{iid}").headers["ETag"]
    ok = client.post(url, json={"action": "file"}, headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.headers["ETag"] != etag
    stale = client.post(url, json={"action": "dispatch"}, headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json["field"] == "If-Match"
    bad = client.post(url, json={"action": "dispatch"}, headers={"If-Match": "abc"})
    assert bad.status_code == 400 and bad.json["field"] == "If-Match"


def test_bad_actions(client, engine, app, units):
    iid = make(engine, app, units, "dispatched")
    url = f"/api/v1/incidents/{iid}/actions"
    assert client.post(url, json={"action": "fly"}).json["field"] == "action"
    assert client.post(url, json={}).json["field"] == "action"
    assert client.post(url, data="nope", content_type="application/json").json["field"] == "body"
    assert client.post(url, json={"action": "postpone", "reason": "r", "amount": -1}
                       ).json["field"] == "amount"
    assert client.post(url, json={"action": "postpone", "reason": "r", "amount": 1,
                                  "unit": "w"}).json["field"] == "unit"
    assert client.post("/api/v1/incidents/999999999/actions",
                       json={"action": "file"}).status_code == 404


def test_overdue_listing_and_automatic_escalation(client, engine, app, units):
    iid = make(engine, app, units, "handling")
    with engine.begin() as conn:
        conn.execute(text("UPDATE incidents SET due_at = now() - interval '1 hour' "
                          "WHERE id = :i"), {"i": iid})
    overdue = client.get("/api/v1/incidents?overdue=true&limit=10000").json
    assert iid in [f["id"] for f in overdue["features"]]
    assert all(f["properties"]["overdue"] for f in overdue["features"])
    assert client.get(f"/api/v1/incidents/{iid}").json["overdue"] is True
    r = client.post("/api/v1/incidents/escalate-overdue")
    assert {"id": iid, "circulation": "small"} in r.json["escalated"]
    r = client.post("/api/v1/incidents/escalate-overdue")  # not again within 24 h
    assert iid not in [e["id"] for e in r.json["escalated"]]
    inc = client.get(f"/api/v1/incidents/{iid}").json
    assert inc["circulation"] == "small" and inc["timeline"][-1]["data"]["automatic"] is True


def test_list_filters(client, engine, app, units):
    iid = make(engine, app, units, "parked", 4)
    code = units[0][4]
    fc = client.get(f"/api/v1/incidents?status=parked&grid={code}").json
    assert fc["type"] == "FeatureCollection" and iid in [f["id"] for f in fc["features"]]
    assert all(f["properties"]["status"] == "parked" and f["properties"]["grid_code"] == code
               for f in fc["features"])
    lon, lat = point_in(units, code)
    box = f"{lon - 1e-4},{lat - 1e-4},{lon + 1e-4},{lat + 1e-4}"
    assert iid in [f["id"] for f in client.get(f"/api/v1/incidents?bbox={box}").json["features"]]
    future = client.get("/api/v1/incidents?from=2099-01-01").json
    assert future["features"] == [] and future["numberMatched"] == 0
    for q, field in (("status=x", "status"), ("category=x", "category"), ("bbox=1,2", "bbox"),
                     ("overdue=maybe", "overdue"), ("from=yesterday", "from"),
                     ("grid=12", "grid"), ("limit=0", "limit")):
        r = client.get(f"/api/v1/incidents?{q}")
        assert r.status_code == 400 and r.json["field"] == field, q


def test_rules_and_categories_endpoints(client):
    rules = client.get("/api/v1/incidents/actions").json
    assert {r["action"] for r in rules["actions"]} == set(core.RULES)
    cats = client.get("/api/v1/incident-categories").json["categories"]
    assert {"code": "E0101", "time_limit": "4h", "department": "sanitation"}.items() <= \
        next(c for c in cats if c["code"] == "E0101").items()
    assert {c["kind"] for c in cats} == {"event", "part"}


# -- working calendar (pure) -------------------------------------------------------------------
def sh(*args) -> datetime:
    return datetime(*args, tzinfo=SH)


def test_working_hours_across_a_weekend():
    cal = WorkCalendar()
    friday = sh(2025, 3, 7, 16, 0)
    assert cal.add_hours(friday, 1.5) == sh(2025, 3, 7, 17, 30)
    assert cal.add_hours(friday, 4) == sh(2025, 3, 10, 11, 0)  # Mon 08:30 + 2.5 h
    assert cal.add_hours(sh(2025, 3, 10, 11, 0), 2) == sh(2025, 3, 10, 14, 30)  # lunch
    assert cal.add_hours(sh(2025, 3, 8, 10, 0), 1) == sh(2025, 3, 10, 9, 30)  # Saturday
    assert cal.add_hours(sh(2025, 3, 10, 7, 0), 0) == sh(2025, 3, 10, 8, 30)
    assert cal.working_hours_between(friday, sh(2025, 3, 10, 11, 0)) == 4
    # UTC in, UTC out
    utc = friday.astimezone(timezone.utc)
    assert cal.add_hours(utc, 4) == sh(2025, 3, 10, 11, 0)
    assert cal.add_hours(utc, 4).tzinfo == timezone.utc


def test_working_time_across_a_holiday_and_a_makeup_day():
    cal = from_dict({"holidays": ["2025-03-10"], "workdays": ["2025-03-15"]})
    friday = sh(2025, 3, 7, 16, 0)
    assert cal.add_hours(friday, 4) == sh(2025, 3, 11, 11, 0)  # Monday is a holiday
    assert cal.add_days(friday, 1) == sh(2025, 3, 11, 17, 30)
    assert cal.add_days(friday, 5) == sh(2025, 3, 15, 17, 30)  # the make-up Saturday
    assert WorkCalendar().add_days(friday, 1) == sh(2025, 3, 10, 17, 30)
    assert not cal.is_working_day(date(2025, 3, 10)) and cal.is_working_day(date(2025, 3, 15))


def test_the_shipped_calendar_knows_national_day():
    from gis_server.core import workcalendar
    cal = workcalendar.load()
    # dispatched on 30 September 2025 at 17:00; 1–8 October are holidays, 11 Oct is worked
    assert cal.add_hours(sh(2025, 9, 30, 17, 0), 1) == sh(2025, 10, 9, 9, 0)
    assert cal.add_days(sh(2025, 10, 9, 10, 0), 2) == sh(2025, 10, 11, 17, 30)


def test_calendar_rejects_bad_files():
    with pytest.raises(ValueError):
        from_dict({"working_hours": ["12:00-08:00"]})
    with pytest.raises(ValueError):
        from_dict({"working_hours": ["08:00-12:00", "11:00-13:00"]})
    with pytest.raises(ValueError):
        WorkCalendar().add_hours(datetime(2025, 1, 1), 1)

"""Position ingest (OsmAnd + batches), de-duplication and ordering, day partitions, filtering
rules, geofence and status events, live GeoJSON and its scope, workers, tracks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from gis_server.core import positions as core
from gis_server.core.locate import GridIndex

def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


class Workers:
    """Grid admins (then volunteers: the notebook data walks the grid admins) of distinct
    unit grids, each used by one test (no shared history)."""

    def __init__(self, engine):
        self.engine = engine
        self.used: list[int] = [0]

    def next(self, unit_prefix: str = ""):
        w = rows(self.engine, """
            SELECT w.id, w.device_id, wg.grid_code,
                   ST_X(ST_PointOnSurface(g.geom)) AS x, ST_Y(ST_PointOnSurface(g.geom)) AS y
            FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id
            JOIN grids g ON g.code = wg.grid_code AND g.valid_to IS NULL
            WHERE w.role IN ('grid_admin', 'volunteer') AND wg.grid_code LIKE :p || '%'
              AND w.id <> ALL(:used)
              AND NOT EXISTS (SELECT 1 FROM positions p WHERE p.worker_id = w.id)
              AND NOT EXISTS (SELECT 1 FROM latest_positions l WHERE l.worker_id = w.id)
            ORDER BY w.role <> 'grid_admin', md5(w.id::text) LIMIT 1""",
                 p=unit_prefix, used=self.used)[0]
        self.used.append(w.id)
        return w


@pytest.fixture(scope="module")
def workers(engine):
    return Workers(engine)


def other_unit_point(engine, code):
    """A point inside a current unit grid other than ``code``, and that grid's code."""
    r = rows(engine, """
        SELECT o.code, ST_X(ST_PointOnSurface(o.geom)) AS x, ST_Y(ST_PointOnSurface(o.geom)) AS y
        FROM grids g JOIN grids o ON o.level = 'unit' AND o.valid_to IS NULL
             AND o.code <> g.code AND ST_Touches(o.geom, g.geom)
        WHERE g.code = :c AND g.valid_to IS NULL ORDER BY o.code LIMIT 1""", c=code)[0]
    return r


def osmand(client, device, lat, lon, t: datetime, **extra):
    return client.get("/track/osmand", query_string={
        "id": device, "lat": lat, "lon": lon, "timestamp": int(t.timestamp()), **extra})


def history(engine, wid):
    return rows(engine, "SELECT recorded_at, grid_id FROM positions WHERE worker_id = :w "
                        "ORDER BY recorded_at", w=wid)


def latest(engine, wid):
    found = rows(engine, "SELECT * FROM latest_positions WHERE worker_id = :w", w=wid)
    return found[0] if found else None


# -- ingest ---------------------------------------------------------------------------------
def test_osmand_stores_history_latest_and_grid(app, engine, workers):
    w = workers.next()
    anon = app.test_client()
    t = now() - timedelta(minutes=5)
    r = osmand(anon, w.device_id, w.y, w.x, t, batt=55, accuracy=5, speed=1)
    assert r.status_code == 200 and r.headers["X-Positions-Accepted"] == "1"
    (stored,) = history(engine, w.id)
    assert stored.recorded_at == t
    code = rows(engine, "SELECT code FROM grids WHERE id = :i", i=stored.grid_id)[0].code
    with engine.connect() as conn:
        assert code == GridIndex.build(conn).locate(w.x, w.y)["unit"]["code"] == w.grid_code
    lp = latest(engine, w.id)
    assert lp.recorded_at == t and lp.battery == 55 and lp.in_assigned is True
    # POST form body and the JSON variant reach the same place
    t2, t3 = t + timedelta(seconds=30), t + timedelta(seconds=60)
    r = anon.post("/track/osmand", data={"id": w.device_id, "lat": w.y, "lon": w.x,
                                         "timestamp": int(t2.timestamp()) * 1000})
    assert r.status_code == 200
    r = anon.post("/track/osmand", json={"device_id": w.device_id, "location": {
        "timestamp": t3.isoformat(), "coords": {"latitude": w.y, "longitude": w.x, "speed": 0,
                                                "heading": 0, "accuracy": 4, "altitude": 50},
        "battery": {"level": 0.5, "is_charging": False}, "is_moving": False}})
    assert r.status_code == 200
    assert [h.recorded_at for h in history(engine, w.id)] == [t, t2, t3]
    assert latest(engine, w.id).battery == 50


def test_unknown_device_is_refused_and_counted(app, engine):
    anon = app.test_client()
    before = rows(engine, "SELECT coalesce(sum(count), 0) FROM position_rejections "
                          "WHERE reason = 'unknown_device' AND device_id = 'nobody-123'")[0][0]
    r = osmand(anon, "nobody-123", 39.9, 116.3, now())
    assert r.status_code == 400 and r.json["error"] == "unknown_device"
    r = anon.post("/track/osmand", json={"device_id": "nobody-123", "location": {
        "timestamp": now().isoformat(), "coords": {"latitude": 39.9, "longitude": 116.3}}})
    assert r.status_code == 404  # Traccar's answer in the JSON form
    after = rows(engine, "SELECT sum(count) FROM position_rejections "
                         "WHERE reason = 'unknown_device' AND device_id = 'nobody-123'")[0][0]
    assert after == before + 2
    assert rows(engine, "SELECT count(*) FROM positions WHERE received_at > now() - "
                        "interval '1 minute' AND worker_id IS NULL")[0][0] == 0


def test_duplicates_once_and_late_points_do_not_move_latest(app, engine, workers, client):
    w = workers.next()
    anon = app.test_client()
    t = now() - timedelta(minutes=20)
    assert osmand(anon, w.device_id, w.y, w.x, t).headers["X-Positions-Accepted"] == "1"
    r = osmand(anon, w.device_id, w.y, w.x, t)
    assert r.status_code == 200 and r.headers["X-Positions-Duplicates"] == "1"
    # a late point (older than latest) goes into history only
    late = t - timedelta(minutes=3)
    assert osmand(anon, w.device_id, w.y + 1e-5, w.x, late).status_code == 200
    assert [h.recorded_at for h in history(engine, w.id)] == [late, t]
    assert latest(engine, w.id).recorded_at == t
    # a batch with duplicates inside itself and against history
    fixes = [{"id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(x.timestamp())}
             for x in (t, t + timedelta(minutes=1), t + timedelta(minutes=1),
                       t + timedelta(minutes=2))]
    body = client.post("/api/v1/positions", json={"positions": fixes}).json
    assert body["received"] == 4 and body["accepted"] == 2 and body["duplicates"] == 2
    assert latest(engine, w.id).recorded_at == t + timedelta(minutes=2)


def test_partitions_across_midnight(client, engine, workers):
    w = workers.next()
    before = datetime(2025, 3, 1, 23, 59, 30, tzinfo=timezone.utc)
    after = datetime(2025, 3, 2, 0, 0, 30, tzinfo=timezone.utc)
    fixes = [{"id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(x.timestamp())}
             for x in (before, after)]
    body = client.post("/api/v1/positions", json=fixes).json
    assert body["accepted"] == 2
    placed = rows(engine, "SELECT tableoid::regclass::text AS part, recorded_at FROM positions "
                          "WHERE worker_id = :w ORDER BY recorded_at", w=w.id)
    assert [p.part for p in placed] == ["positions_20250301", "positions_20250302"]


def test_partition_created_late_takes_rows_from_default(engine, workers):
    w = workers.next()
    t = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO positions (worker_id, recorded_at, geom) VALUES "
                          "(:w, :t, ST_SetSRID(ST_MakePoint(:x, :y), 4326))"),
                     {"w": w.id, "t": t, "x": w.x, "y": w.y})
        where = {"w": w.id, "t": t}
        assert conn.execute(text("SELECT tableoid::regclass::text FROM positions "
                                 "WHERE worker_id = :w AND recorded_at = :t"), where).scalar() \
            == "positions_default"
        conn.execute(text("SELECT ensure_position_partition('2024-06-01')"))
        assert conn.execute(text("SELECT tableoid::regclass::text FROM positions "
                                 "WHERE worker_id = :w AND recorded_at = :t"), where).scalar() \
            == "positions_20240601"


def test_filtering_rules_count_every_refusal(client, engine, workers):
    w = workers.next()
    t = now() - timedelta(minutes=40)
    far = (w.y + 0.05, w.x)  # ~5.5 km away: a jump in 1 minute
    fixes = [
        {"id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(t.timestamp())},
        {"id": w.device_id, "lat": far[0], "lon": far[1],
         "timestamp": int((t + timedelta(minutes=1)).timestamp())},          # spike
        {"id": w.device_id, "lat": w.y + 1e-4, "lon": w.x,
         "timestamp": int((t + timedelta(minutes=2)).timestamp())},          # fine again
        {"id": w.device_id, "lat": w.y, "lon": w.x, "accuracy": 900,
         "timestamp": int((t + timedelta(minutes=3)).timestamp())},          # poor accuracy
        {"id": w.device_id, "lat": w.y, "lon": w.x,
         "timestamp": int((now() + timedelta(days=2)).timestamp())},           # future
        {"id": "no-such-device", "lat": w.y, "lon": w.x, "timestamp": int(t.timestamp())},
    ]
    body = client.post("/api/v1/positions", json={"positions": fixes}).json
    assert body["accepted"] == 2 and body["rejected"] == 4
    assert body["rejected_by_reason"] == {"impossible_speed": 1, "poor_accuracy": 1,
                                          "future": 1, "unknown_device": 1}
    assert len(history(engine, w.id)) == 2
    counted = dict(rows(engine, "SELECT reason, sum(count) FROM position_rejections "
                                "WHERE worker_id = :w GROUP BY reason", w=w.id))
    assert counted == {"impossible_speed": 1, "poor_accuracy": 1, "future": 1}
    listed = client.get("/api/v1/positions/rejections").json["rejections"]
    assert {r["reason"] for r in listed} >= {"impossible_speed", "poor_accuracy", "future"}


def test_grid_worker_may_only_upload_for_their_own_device(app, engine, accounts, client_as,
                                                          workers):
    w = workers.next()
    own = rows(engine, "SELECT w.id, w.device_id FROM workers w JOIN worker_grids wg ON "
                       "wg.worker_id = w.id WHERE wg.grid_code = :c ORDER BY w.id LIMIT 1",
               c=accounts["grid_worker"]["scope"])[0]
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET worker_id = :w WHERE id = :u"),
                     {"w": own.id, "u": accounts["grid_worker"]["user"]["id"]})
    c = client_as("grid_worker")
    r = c.post("/api/v1/positions", json=[{"id": w.device_id, "lat": w.y, "lon": w.x}])
    assert r.status_code == 403
    r = c.post("/api/v1/positions", json=[{"id": own.device_id, "lat": 39.9, "lon": 116.3,
                                           "timestamp": int(now().timestamp()) - 7200}])
    assert r.status_code == 200 and r.json["received"] == 1
    assert client_as("planner").post("/api/v1/positions", json=[]).status_code == 403
    bad = client_as("command_center").post("/api/v1/positions", json={"positions": 3})
    assert bad.status_code == 400 and bad.json["field"] == "positions"


# -- events ---------------------------------------------------------------------------------
def test_geofence_exit_and_enter_events(app, engine, workers, client):
    w = workers.next()
    out = other_unit_point(engine, w.grid_code)
    anon = app.test_client()
    t = now() - timedelta(minutes=30)
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    osmand(anon, w.device_id, w.y, w.x, t)
    osmand(anon, w.device_id, out.y, out.x, t + timedelta(minutes=5))
    lp = latest(engine, w.id)
    assert lp.in_assigned is False
    osmand(anon, w.device_id, w.y, w.x, t + timedelta(minutes=10))
    # a late point outside does not produce an event (latest does not move back)
    osmand(anon, w.device_id, out.y, out.x, t + timedelta(minutes=7))
    events = client.get("/api/v1/events", query_string={"worker_id": w.id,
                                                          "since": since.isoformat()}).json
    kinds = [(e["kind"], e["grid_code"]) for e in reversed(events["events"])
             if e["kind"] in ("grid_exit", "grid_enter")]  # (offline may come and go)
    assert kinds == [("grid_exit", out.code), ("grid_enter", w.grid_code)]
    exits = client.get(f"/api/v1/events?worker_id={w.id}&kind=grid_exit").json["events"]
    assert len(exits) == 1
    assert client.get("/api/v1/events?kind=teleport").json["field"] == "kind"


def test_offline_and_stopped_events_by_sweep(app, engine, workers, monkeypatch):
    # (the app sweeps by itself at most every 15 s after an ingest: not during this test, so
    # that the events below come from the sweeps the test runs)
    monkeypatch.setattr(core.SWEEPER, "interval", 1e9)
    w1, w2 = workers.next(), workers.next()
    anon = app.test_client()
    osmand(anon, w1.device_id, w1.y, w1.x, now() - timedelta(minutes=20))
    # w2 reports from the same spot for 20 minutes
    for minutes in (25, 15, 5, 0):
        osmand(anon, w2.device_id, w2.y, w2.x, now() - timedelta(minutes=minutes))
    rules = core.Rules(offline_after_s=600, stop_after_s=900)
    with engine.begin() as conn:
        new = core.sweep_status(conn, rules)
    mine = {(e["worker_id"], e["kind"]) for e in new}
    assert (w1.id, "offline") in mine and (w2.id, "stopped") in mine
    assert (w2.id, "offline") not in mine
    with engine.begin() as conn:  # announced once
        again = {(e["worker_id"], e["kind"]) for e in core.sweep_status(conn, rules)}
    assert (w1.id, "offline") not in again and (w2.id, "stopped") not in again
    status = dict(rows(engine, "SELECT worker_id, status FROM device_status "
                               "WHERE worker_id IN (:a, :b)", a=w1.id, b=w2.id))
    assert status == {w1.id: "offline", w2.id: "online"}
    # coming back online is an event too
    osmand(anon, w1.device_id, w1.y, w1.x, now())
    kinds = [r.kind for r in rows(engine, "SELECT kind FROM position_events WHERE worker_id = :w "
                                          "ORDER BY id", w=w1.id)]
    assert kinds[-2:] == ["offline", "online"]


# -- live, workers, scope ---------------------------------------------------------------------
def test_live_geojson_scope_and_status(app, engine, accounts, client_as, workers):
    community_a = accounts["community_admin"]["scope"]
    community_b = accounts["community_admin_b"]["scope"]
    wa = workers.next(community_a[:12])
    wb = workers.next(community_b[:12])
    anon = app.test_client()
    osmand(anon, wa.device_id, wa.y, wa.x, now() - timedelta(seconds=10))
    osmand(anon, wb.device_id, wb.y, wb.x, now() - timedelta(seconds=10))
    a = client_as("community_admin").get("/api/v1/workers/live")
    assert a.status_code == 200 and a.mimetype == "application/geo+json"
    ids = {f["id"] for f in a.json["features"]}
    assert wa.id in ids and wb.id not in ids
    feature = next(f for f in a.json["features"] if f["id"] == wa.id)
    assert feature["properties"]["status"] == "online"
    assert feature["properties"]["grid_code"] == wa.grid_code
    assert feature["properties"]["in_assigned_grid"] is True
    # an explicit scope narrows; a grid outside the caller's scope is 404
    cc = client_as("command_center")
    narrowed = cc.get(f"/api/v1/workers/live?scope={community_b}").json["features"]
    assert {f["id"] for f in narrowed} >= {wb.id} and wa.id not in {f["id"] for f in narrowed}
    assert client_as("community_admin").get(
        f"/api/v1/workers/live?scope={community_b}").status_code == 404
    assert cc.get("/api/v1/workers/live?scope=12").json["field"] == "scope"


def test_workers_listing_and_personal_data(client_as, accounts, engine):
    scope = accounts["community_admin"]["scope"]
    cc = client_as("command_center").get(f"/api/v1/workers?scope={scope}").json["workers"]
    assert cc and all(w["phone"] and w["name"] and w["device_id"] for w in cc)
    assert all(any(g["code"].startswith(scope[:12]) for g in w["grids"]) for w in cc)
    analyst = client_as("analyst").get(f"/api/v1/workers?scope={scope}").json["workers"]
    assert len(analyst) == len(cc)
    assert all(not ({"name", "phone", "device_id"} & set(w)) for w in analyst)
    assert all(w["role"] and w["grids"] for w in analyst)
    admin = client_as("admin").get(f"/api/v1/workers?scope={scope}").json["workers"]
    assert all("*" in w["phone"] for w in admin if w["phone"])
    audited = rows(engine, "SELECT count(*) FROM audit_log WHERE action = 'read_personal' "
                           "AND object_type = 'workers'")[0][0]
    assert audited >= 1
    assert client_as("reporter").get("/api/v1/workers").status_code == 403


def test_track_distance_duration_stops(client, workers):
    w = workers.next()
    t0 = datetime(2025, 5, 10, 8, 0, tzinfo=timezone.utc)
    # 10 minutes still, then walk north ~11 m per minute for 10 minutes
    fixes = [{"id": w.device_id, "lat": w.y, "lon": w.x,
              "timestamp": int((t0 + timedelta(minutes=m)).timestamp())} for m in range(11)]
    fixes += [{"id": w.device_id, "lat": w.y + 0.0001 * k, "lon": w.x,
               "timestamp": int((t0 + timedelta(minutes=10 + k)).timestamp())}
              for k in range(1, 11)]
    assert client.post("/api/v1/positions", json=fixes).json["accepted"] == 21
    r = client.get(f"/api/v1/workers/{w.id}/track?from=2025-05-10T00:00:00Z"
                   f"&to=2025-05-11T00:00:00Z")
    assert r.status_code == 200 and r.mimetype == "application/geo+json"
    f = r.json
    assert f["geometry"]["type"] == "LineString" and len(f["geometry"]["coordinates"]) == 21
    p = f["properties"]
    assert p["duration_s"] == 1200
    assert p["distance_m"] == pytest.approx(10 * 11.12, rel=0.01)
    assert len(p["stops"]) == 1 and p["stops"][0]["duration_s"] >= 600
    assert client.get("/api/v1/workers/99999999/track").status_code == 404
    assert client.get(f"/api/v1/workers/{w.id}/track?from=2025-05-11&to=2025-05-10"
                      ).json["field"] == "from"


def test_single_fix_jump_is_refused_and_counted(app, engine, workers):
    w = workers.next()
    anon = app.test_client()
    t = now() - timedelta(minutes=50)
    assert osmand(anon, w.device_id, w.y, w.x, t).headers["X-Positions-Accepted"] == "1"
    r = osmand(anon, w.device_id, w.y + 0.1, w.x, t + timedelta(seconds=30))  # 11 km in 30 s
    assert r.status_code == 200  # refused, not an error: the phone must not retry it
    assert r.headers["X-Positions-Accepted"] == "0"
    assert r.headers["X-Positions-Rejected"] == "impossible_speed=1"
    assert latest(engine, w.id).recorded_at == t and len(history(engine, w.id)) == 1
    assert rows(engine, "SELECT sum(count) FROM position_rejections WHERE worker_id = :w "
                        "AND reason = 'impossible_speed'", w=w.id)[0][0] == 1


# -- write-path performance measures (migration 0009, OsmandFastPath) -------------------------
def test_known_device_fix_skips_flask_and_answers_like_the_view(app, engine, workers,
                                                                 monkeypatch):
    from gis_server.web import positions as web
    w = workers.next()
    anon = app.test_client()
    t = now() - timedelta(minutes=40)
    first = osmand(anon, w.device_id, w.y, w.x, t)  # (creates this process's writer)
    assert first.headers["X-Positions-Accepted"] == "1"
    calls = []
    original = app.wsgi_app.wsgi_app
    monkeypatch.setattr(app.wsgi_app, "wsgi_app",
                        lambda environ, start: calls.append(environ["PATH_INFO"])
                        or original(environ, start))
    r = osmand(anon, w.device_id, w.y + 1e-5, w.x, t + timedelta(seconds=10), batt=40,
               note='say "hi" \\ 网格')
    assert isinstance(app.wsgi_app, web.OsmandFastPath) and calls == []
    assert r.status_code == 200 and r.data == b""
    assert r.mimetype == "text/plain"
    assert (r.headers["X-Positions-Accepted"], r.headers["X-Positions-Duplicates"],
            r.headers["X-Positions-Rejected"]) == ("1", "0", "0")
    # the attribute (quotes, backslash, CJK) is stored verbatim
    got = latest(engine, w.id)
    assert got.battery == 40 and got.attributes == {"note": 'say "hi" \\ 网格'}
    dup = osmand(anon, w.device_id, w.y + 1e-5, w.x, t + timedelta(seconds=10))
    assert dup.headers["X-Positions-Duplicates"] == "1" and calls == []
    # errors and unknown devices still go to the Flask view (same answers as before)
    bad = anon.get("/track/osmand", query_string={"id": w.device_id, "lat": "north",
                                                  "lon": w.x})
    assert bad.status_code == 400 and bad.json["field"] == "lat"
    unknown = anon.get("/track/osmand", query_string={"id": "no-such-phone", "lat": w.y,
                                                      "lon": w.x})
    assert unknown.status_code == 400 and unknown.json["error"] == "unknown_device"
    assert calls == ["/track/osmand", "/track/osmand"]


def test_batch_fast_path_stores_what_the_general_parser_reads(client, engine, workers):
    w = workers.next()
    t = now() - timedelta(minutes=30)
    item = {"device_id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(t.timestamp()),
            "speed": 2, "bearing": 90.5, "altitude": 41, "accuracy": 7, "batt": 80}
    from gis_server.core.osmand import parse_query
    general = parse_query({("id" if k == "device_id" else k): str(v) for k, v in item.items()})
    r = client.post("/api/v1/positions", json={"positions": [item, {**item, "lat": 91}]})
    assert r.status_code == 400 and r.json["field"] == "positions[1].lat"
    extra = {**item, "timestamp": int(t.timestamp()) + 60, "note": 'a "b" \\ c'}
    body = client.post("/api/v1/positions", json={"positions": [item]}).json
    assert body["accepted"] == 1  # (the flat fast path)
    body = client.post("/api/v1/positions", json={"positions": [extra]}).json
    assert body["accepted"] == 1  # (an attribute: the general path)
    stored = rows(engine, "SELECT speed, bearing, altitude, accuracy, battery, attributes "
                          "FROM positions WHERE worker_id = :w ORDER BY recorded_at", w=w.id)
    assert stored[0][:5] == (general.speed, 90.5, 41, 7, 80) and stored[0][5] is None
    assert stored[1][5] == {"note": 'a "b" \\ c'}


def test_same_time_twice_in_a_batch_keeps_the_first_sent(client, engine, workers):
    w = workers.next()
    t = int((now() - timedelta(minutes=40)).timestamp())
    first = {"id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": t}
    second = {**first, "lat": w.y + 0.0001}
    body = client.post("/api/v1/positions", json=[first, second]).json
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 1, 0)
    assert rows(engine, "SELECT ST_Y(geom) FROM positions WHERE worker_id = :w",
                w=w.id) == [(w.y,)]
    assert rows(engine, "SELECT ST_Y(geom) FROM latest_positions WHERE worker_id = :w",
                w=w.id) == [(w.y,)]


def test_batch_integer_times_and_bodies_orjson_refuses(client, engine, workers):
    w = workers.next()
    item = {"id": w.device_id, "lat": w.y, "lon": w.x}
    r = client.post("/api/v1/positions", json=[{**item, "timestamp": 10**30}])
    assert r.status_code == 400 and r.json["field"] == "positions[0].timestamp"
    # NaN and 10^30 are refused by orjson but read by the standard parser: same answers
    t = int((now() - timedelta(minutes=20)).timestamp())
    raw = '[{"id": "%s", "lat": NaN, "lon": %r, "timestamp": %d}]' % (w.device_id, w.x, t)
    r = client.post("/api/v1/positions", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.json["field"] == "positions[0].lat"
    raw = '{"positions": [{"id": "%s", "lat": %r, "lon": %r, "timestamp": %d, "n": %d}]}' % (
        w.device_id, w.y, w.x, t, 10**30)
    body = client.post("/api/v1/positions", data=raw, content_type="application/json").json
    assert body["accepted"] == 1
    stored = rows(engine, "SELECT attributes FROM positions WHERE worker_id = :w", w=w.id)
    assert stored == [({"n": 10**30},)]  # (an integer, as the standard parser reads it)
    r = client.post("/api/v1/positions", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.json["field"] == "positions"
    r = client.post("/api/v1/positions", data=raw, content_type="text/plain")
    assert r.status_code == 400 and r.json["field"] == "positions"


def test_deleting_a_worker_deletes_their_history(engine, workers, client):
    w = workers.next()
    t = now() - timedelta(minutes=25)
    fixes = [{"id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": int(t.timestamp()) + i}
             for i in range(3)]
    assert client.post("/api/v1/positions", json={"positions": fixes}).json["accepted"] == 3
    with engine.connect() as conn:  # (rolled back: the worker stays for other tests)
        conn.execute(text("DELETE FROM position_events WHERE worker_id = :w"), {"w": w.id})
        conn.execute(text("DELETE FROM workers WHERE id = :w"), {"w": w.id})
        left = conn.execute(text("SELECT count(*) FROM positions WHERE worker_id = :w"),
                            {"w": w.id}).scalar()
        conn.rollback()
    assert left == 0 and len(history(engine, w.id)) == 3

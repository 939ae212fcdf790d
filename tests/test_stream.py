"""Server-Sent Events through gunicorn with two worker processes: a snapshot first, then
positions fanned out across processes via LISTEN/NOTIFY, filtered by each client's scope."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest
import requests
from sqlalchemy import text

from gis_server.serving import gunicorn_process


@pytest.fixture(scope="module")
def gunicorn_server(database_url):
    # the production serving options, 2 worker processes
    with gunicorn_process(database_url, 2, {"GIS_PUBLIC_RATE_LIMIT": "100000/minute"},
                          ready_within=60) as base:
        yield base


class SSEClient:
    def __init__(self, url: str, token: str):
        self.response = requests.get(url, headers={"Authorization": f"Bearer {token}"},
                                     stream=True, timeout=(5, 60))
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.pid = self.response.headers["X-Server-Process"]
        self.events: list[tuple[str, object]] = []
        self.closed_by: Exception | None = None  # how reading ended (the test closes it)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        event, data = None, []
        try:
            for line in self.response.iter_lines(chunk_size=1 << 16, decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and event:
                    self.events.append((event, json.loads("\n".join(data))))
                    event, data = None, []
        except Exception as exc:  # closing the response ends the read loop this way
            self.closed_by = exc

    def positions(self) -> dict[int, list]:
        out = {}
        for event, data in list(self.events):
            if event == "positions":
                for p in data:
                    out.setdefault(p[0], []).append(p)
        return out

    def wait(self, predicate, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.response.close()


def pick_worker(engine, prefix):
    with engine.connect() as conn:
        return conn.execute(text("""
            SELECT w.id, w.device_id, ST_X(ST_PointOnSurface(g.geom)) AS x,
                   ST_Y(ST_PointOnSurface(g.geom)) AS y
            FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id
            JOIN grids g ON g.code = wg.grid_code AND g.valid_to IS NULL
            WHERE w.role = 'volunteer' AND wg.grid_code LIKE :p || '%'
            ORDER BY w.id DESC LIMIT 1"""), {"p": prefix}).one()


def test_stream_across_processes_and_scopes(gunicorn_server, accounts, engine):
    base = gunicorn_server
    url = base + "/api/v1/stream"
    a_scope = accounts["community_admin"]["scope"][:12]
    b_scope = accounts["community_admin_b"]["scope"][:12]
    wa, wb = pick_worker(engine, a_scope), pick_worker(engine, b_scope)

    # Command-centre clients until two different worker processes hold one each.
    wide: dict[str, SSEClient] = {}
    opened = []
    for _ in range(60):
        c = SSEClient(url, accounts["command_center"]["token"])
        opened.append(c)
        wide.setdefault(c.pid, c)
        if len(wide) == 2:
            break
        time.sleep(0.1)  # (each open stream keeps a thread of its worker busy)
    assert len(wide) == 2, "gunicorn should spread connections over its two workers"
    scoped = SSEClient(url, accounts["community_admin"]["token"])
    clients = list(wide.values()) + [scoped]
    for c in clients:  # everybody starts with a snapshot
        assert c.wait(lambda s: any(e == "snapshot" for e, _ in s.events))
        snapshot = next(d for e, d in c.events if e == "snapshot")
        assert snapshot["type"] == "FeatureCollection"

    t = int(datetime.now(timezone.utc).timestamp())
    sent_at = time.time()
    # outside the scoped client's community first, then inside it
    for w, dt in ((wb, 0), (wa, 1)):
        r = requests.get(base + "/track/osmand", params={
            "id": w.device_id, "lat": w.y, "lon": w.x, "timestamp": t + dt})
        assert r.status_code == 200, r.text

    for c in wide.values():  # both processes' clients get both fixes
        assert c.wait(lambda s: {wa.id, wb.id} <= set(s.positions())), c.events
        p = c.positions()[wa.id][-1]
        assert (p[1], p[2]) == (round(wa.x, 7), round(wa.y, 7)) and p[3] == (t + 1) * 1000
    assert time.time() - sent_at < 5
    assert scoped.wait(lambda s: wa.id in s.positions())
    time.sleep(0.3)
    assert wb.id not in scoped.positions()  # outside community_admin's scope
    # the scoped snapshot also holds only its own workers
    with engine.connect() as conn:
        allowed = {r[0] for r in conn.execute(text(
            "SELECT worker_id FROM worker_grids WHERE grid_code LIKE :p || '%'"),
            {"p": a_scope})}
    snap = next(d for e, d in scoped.events if e == "snapshot")
    assert {f["id"] for f in snap["features"]} <= allowed
    # (the streams end when the server stops: closing a response while its reader thread
    # blocks would wait for the next heartbeat)


def test_stream_requires_staff(gunicorn_server, accounts):
    r = requests.get(gunicorn_server + "/api/v1/stream", timeout=5)
    assert r.status_code == 401
    r = requests.get(gunicorn_server + "/api/v1/stream", timeout=5,
                     headers={"Authorization": f"Bearer {accounts['reporter']['token']}"})
    assert r.status_code == 403
    r = requests.get(gunicorn_server + "/api/v1/stream?scope=99", timeout=5,
                     headers={"Authorization": f"Bearer {accounts['admin']['token']}"})
    assert r.status_code == 400 and r.json()["field"] == "scope"

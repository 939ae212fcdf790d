"""Server-Sent Events: live positions and events for the caller's scope.

Fan-out across gunicorn worker processes through PostgreSQL ``LISTEN/NOTIFY``: every write
``pg_notify``-s on :data:`~gis_server.core.positions.CHANNEL` in its transaction (so only
committed changes are announced, whichever process wrote them). Each process runs one
listener thread with one dedicated psycopg 3 connection (``conn.notifies()``) and hands every
notification to the queues of its connected clients, filtered by each client's scope (a
worker is visible when one of its assigned grid codes starts with the client's scope
prefix: the same rule as the ``workers`` row-level security policy).

A client first receives a ``snapshot`` (the live GeoJSON of its scope), then ``positions``
and ``events`` messages. It registers for notifications *before* the snapshot is read, so
nothing falls between the two; the client keeps the newest fix per worker (every fix carries
its time). A reconnecting client starts again from a snapshot (no replay).

Long-lived responses need a threaded worker: ``gunicorn --worker-class gthread --threads 32``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time

import psycopg
from flask import Blueprint, Response, current_app, request
from sqlalchemy import text

from .. import access
from ..core import params
from ..core import positions as core
from ..core.accounts import scope_prefix
from ..db import close_db, get_db, get_engine

log = logging.getLogger(__name__)
bp = Blueprint("stream", __name__)

HEARTBEAT_S = 15.0
QUEUE_MAX = 1000


class Client:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_MAX)
        self.dropped = 0

    def put(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:  # a client too slow to keep up: tell it to resync
            self.dropped += 1


class Hub:
    """One per process and database: the LISTEN thread and the connected clients."""

    def __init__(self, url: str, engine, rules: core.Rules):
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.engine = engine
        self.rules = rules
        self.clients: set[Client] = set()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.scopes: dict[int, tuple[str, ...]] = {}
        self._scope_version = None
        self._scope_checked = 0.0
        self.thread = threading.Thread(target=self._run, name="gis-sse-listener", daemon=True)
        self.thread.start()
        threading.Thread(target=self._sweep, name="gis-status-sweep", daemon=True).start()

    # worker → assigned grid codes (for scope filtering), rebuilt when grid_state moves
    def _refresh_scopes(self) -> None:
        now = time.monotonic()
        if now - self._scope_checked < 1.0:
            return
        self._scope_checked = now
        with self.engine.connect() as conn:
            version = conn.execute(text("SELECT version FROM grid_state WHERE id = 1")).scalar()
            if version == self._scope_version:
                return
            scopes: dict[int, list[str]] = {}
            for wid, code in conn.execute(text("SELECT worker_id, grid_code FROM worker_grids")):
                scopes.setdefault(wid, []).append(code)
        self.scopes = {w: tuple(c) for w, c in scopes.items()}
        self._scope_version = version

    def visible(self, worker_id: int, prefix: str) -> bool:
        if prefix == "":
            return True
        return any(code.startswith(prefix) for code in self.scopes.get(worker_id, ()))

    def subscribe(self, prefix: str) -> Client:
        client = Client(prefix)
        with self.lock:
            self.clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        with self.lock:
            self.clients.discard(client)

    def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        self._refresh_scopes()
        with self.lock:
            clients = list(self.clients)
        if message.get("t") == "pos":
            items = message.get("p") or []
            for c in clients:
                mine = [p for p in items if self.visible(p[0], c.prefix)]
                if mine:
                    c.put(("positions", mine))
        elif message.get("t") == "evt":
            items = message.get("e") or []
            for c in clients:
                mine = [e for e in items if self.visible(e["worker_id"], c.prefix)]
                if mine:
                    c.put(("events", mine))

    def _run(self) -> None:
        while True:
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {core.CHANNEL}")
                    self.ready.set()
                    for note in conn.notifies():
                        self._dispatch(note.payload)
            except Exception:
                self.ready.clear()
                log.exception("SSE listener lost its connection; reconnecting")
                time.sleep(1.0)

    def _sweep(self) -> None:
        """Offline / stopped detection while clients watch (one sweeper cluster-wide thanks
        to an advisory lock; ingest requests run it too)."""
        while True:
            time.sleep(core.SWEEPER.interval)
            try:
                core.SWEEPER.maybe_run(self.engine, self.rules)
            except Exception:  # pragma: no cover - logged, retried
                log.exception("status sweep failed")


_hubs: dict[str, Hub] = {}
_hubs_lock = threading.Lock()


def hub() -> Hub:
    url = current_app.config["DATABASE_URL"]
    h = _hubs.get(url)
    if h is None:
        with _hubs_lock:
            h = _hubs.get(url)
            if h is None:
                from .positions import rules
                h = _hubs[url] = Hub(url, get_engine(), rules())
    return h


def _sse(event: str, data) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                         separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n"


@bp.get("/api/v1/stream")
def stream():
    """``text/event-stream``: ``snapshot`` (GeoJSON), then ``positions`` (arrays
    ``[worker_id, lon, lat, epoch_ms, grid_code, in_assigned_grid, speed, battery, state]``)
    and ``events`` (geofence / status events), for the caller's scope (``scope=CODE`` narrows
    it). ``: ping`` comments every 15 s keep proxies from closing the connection."""
    from .positions import rules

    code = params.grid_code(request.args.get("scope"), "scope")
    conn = get_db()
    core.check_scope(conn, code)
    who = access.principal()
    prefix = scope_prefix(code) if code else who.scope
    if code and who.scope and not prefix.startswith(who.scope):
        prefix = who.scope  # (check_scope already refused grids outside the caller's scope)
    h = hub()
    h.ready.wait(timeout=5.0)
    h._refresh_scopes()
    client = h.subscribe(prefix)
    try:
        snapshot = core.live_geojson(conn, rules(), code)
    except Exception:
        h.unsubscribe(client)
        raise
    close_db()  # do not hold a pooled connection for the life of the stream

    def generate():
        try:
            yield "retry: 3000\n\n"
            yield _sse("snapshot", snapshot)
            last = time.monotonic()
            while True:
                try:
                    event, data = client.queue.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() - last >= HEARTBEAT_S:
                        last = time.monotonic()
                        yield ": ping\n\n"
                    continue
                if client.dropped:
                    client.dropped = 0
                    yield _sse("resync", {"reason": "client too slow; reload the snapshot"})
                yield _sse(event, data)
                last = time.monotonic()
        finally:
            h.unsubscribe(client)

    # (no stream_with_context: the generator needs nothing from the request)
    response = Response(generate(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["X-Server-Process"] = str(os.getpid())  # which worker holds the stream
    return response

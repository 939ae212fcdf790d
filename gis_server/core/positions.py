"""Live positions: ingest (filter, de-duplicate, route to the unit grid, store), status and
geofence events, the live GeoJSON, workers and events listings.

Write path (one transaction per request; the fixes travel as columns, :class:`FixColumns`,
decoded straight from a batch body by :func:`~gis_server.core.osmand.decode_flat_batch`):

1. Device ids → workers (an in-process map, rebuilt when ``grid_state.version`` moves: the
   ``workers`` trigger bumps it).
2. Filtering rules (:class:`Rules`, configurable), vectorised with numpy: timestamps too far
   in the future, poor accuracy, impossible speed from the previous *accepted* point of the
   same worker (the stored latest position, read once per batch, or the previous point of
   the batch). Refused fixes are counted per day, reason and worker in
   ``position_rejections`` and reported in the response. The same (worker, time) twice in
   one batch: the first one sent counts, the other is a duplicate.
3. Each fix's unit grid from the process's :class:`~gis_server.core.locate.GridIndex`
   (``route_indices``, vectorised).
4. The day partitions are ensured (``ensure_position_partition``); the history is written by
   one INSERT (:data:`HISTORY_SQL`: a plain insert first, de-duplicating on (worker, time)
   only when the batch meets a stored fix, see :func:`_store_history`); then one statement
   (:data:`LATEST_SQL`) takes each worker's newest fix of the batch, moves
   ``latest_positions`` forward only (``WHERE excluded.recorded_at > latest.recorded_at``),
   writes geofence/online events and ``pg_notify``-s the changes on channel
   :data:`CHANNEL` for the SSE fan-out (``web/stream.py``).

Status by staleness (online / offline / unknown, Traccar's default 600 s) and the
``offline`` / ``stopped`` events come from :func:`sweep_status`, run periodically.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import orjson
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Connection, Engine

from ..errors import APIError, bad_param, not_found
from .osmand import EPOCH, MICROSECOND, Fix, FixColumns

CHANNEL = "gis_live"
NOTIFY_CHUNK = 60  # positions per NOTIFY payload (PostgreSQL's limit is 8000 bytes)
EVENT_CHUNK = 25  # events per NOTIFY payload
EARTH_R = 6371008.8


@dataclass(frozen=True)
class Rules:
    """Filtering and status rules (``GIS_POSITION_*`` settings; see :func:`rules_from`)."""
    max_future_s: float = 300.0  # a fix more than this ahead of the server clock is refused
    max_speed_ms: float = 50.0  # 180 km/h: faster than this from the previous fix = a jump
    max_accuracy_m: float = 200.0  # reported accuracy worse than this is refused
    offline_after_s: float = 600.0  # Traccar's status.timeout default
    stop_radius_m: float = 30.0  # moving less than this...
    stop_after_s: float = 900.0  # ...for this long while online = "stopped" event

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def rules_from(config) -> Rules:
    """Rules from a mapping (Flask config first, then the environment), e.g.
    ``GIS_POSITION_MAX_SPEED_MS=30``."""
    values = {}
    for f in fields(Rules):
        key = "GIS_POSITION_" + f.name.upper()
        raw = (config or {}).get(key, os.environ.get(key))
        if raw not in (None, ""):
            values[f.name] = float(raw)
    return Rules(**values)


# -- device map -------------------------------------------------------------------------------
class DeviceMap:
    """device id → (worker id, active), per engine per process, rebuilt with grid_state."""

    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._maps: dict[int, tuple[int, float, dict]] = {}
        self._tz: dict[int, ZoneInfo] = {}
        self._days: dict[int, set] = {}

    def get(self, engine: Engine) -> dict[str, int]:
        key = id(engine)
        entry = self._maps.get(key)
        now = time.monotonic()
        if entry is not None and now - entry[1] < self.ttl:
            return entry[2]
        with self._lock, engine.connect() as conn:
            version = conn.execute(text("SELECT version FROM grid_state WHERE id = 1")).scalar()
            if entry is None or entry[0] != version:
                rows = conn.execute(text(
                    "SELECT device_id, id FROM workers WHERE device_id IS NOT NULL AND active"))
                entry = (version, now, dict(rows.all()))
            else:
                entry = (version, now, entry[2])
            self._maps[key] = entry
            if key not in self._tz:
                self._tz[key] = ZoneInfo(conn.execute(text("SHOW TimeZone")).scalar())
        return entry[2]

    def timezone(self, engine: Engine) -> ZoneInfo:
        if id(engine) not in self._tz:
            self.get(engine)
        return self._tz[id(engine)]

    def known_days(self, engine: Engine) -> set:
        return self._days.setdefault(id(engine), set())


DEVICES = DeviceMap()


# -- ingest ------------------------------------------------------------------------------------
@dataclass
class IngestResult:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter = None
    latest_moved: int = 0
    events: list = None
    status: list = None

    def to_dict(self) -> dict:
        return {"received": self.received, "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(self.rejected),
                "latest_updated": self.latest_moved, "events": self.events}


def _haversine(lon1, lat1, lon2, lat2):
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_R * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


@dataclass
class Latest:
    """The stored latest fixes of some workers, as arrays sorted by worker id."""
    worker_id: np.ndarray  # int64, sorted
    t: np.ndarray  # epoch seconds
    lon: np.ndarray
    lat: np.ndarray

    def find(self, wids: np.ndarray) -> np.ndarray:
        """Index of each worker's row, -1 for workers without a stored fix."""
        if len(self.worker_id) == 0:
            return np.full(len(wids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.worker_id, wids), len(self.worker_id) - 1)
        return np.where(self.worker_id[pos] == wids, pos, -1)


LATEST_FIXES_SQL = text(
    "SELECT string_agg(concat_ws(' ', worker_id, extract(epoch FROM recorded_at), "
    "ST_X(geom), ST_Y(geom)), ' ' ORDER BY worker_id) FROM latest_positions "
    "WHERE worker_id = ANY(CAST(:w AS int[]))")


def _latest(conn: Connection, wids: np.ndarray) -> Latest:
    """The stored latest fix of each of ``wids`` (unique), read as one text value (no per-row
    fetch and datetime conversion)."""
    packed = conn.execute(LATEST_FIXES_SQL, {"w": _pg_ints(wids)}).scalar()
    a = (np.array(packed.split(" "), dtype=float).reshape(-1, 4) if packed
         else np.empty((0, 4)))
    return Latest(worker_id=a[:, 0].astype(np.int64), t=a[:, 1], lon=a[:, 2], lat=a[:, 3])


def _speed_filter(wid, t, lon, lat, latest: Latest, max_speed: float) -> np.ndarray:
    """Which fixes imply a speed above ``max_speed`` from the previous accepted fix.

    ``wid, t`` (epoch seconds), ``lon, lat``: sorted by (worker, time), no repeated time.
    The first fix of a worker is compared with the stored latest one when that is older.
    Vectorised pass against the raw predecessor; workers with a violation are re-checked
    sequentially against the previous *accepted* fix, so one bad jump does not also condemn
    the good fix that follows it.
    """
    n = len(wid)
    too_fast = np.zeros(n, dtype=bool)
    if n == 0:
        return too_fast
    first = np.ones(n, dtype=bool)
    first[1:] = wid[1:] != wid[:-1]
    px, py, pt = np.roll(lon, 1), np.roll(lat, 1), np.roll(t, 1)
    has_prev = ~first
    heads = np.flatnonzero(first)
    stored = latest.find(wid[heads])
    usable = stored >= 0
    usable[usable] = latest.t[stored[usable]] < t[heads[usable]]
    heads, stored = heads[usable], stored[usable]
    pt[heads], px[heads], py[heads] = latest.t[stored], latest.lon[stored], latest.lat[stored]
    has_prev[heads] = True
    fast = has_prev & (_haversine(px, py, lon, lat) > max_speed * np.maximum(t - pt, 0) + 1.0)
    for worker in np.unique(wid[fast]):
        lo, hi = np.searchsorted(wid, [worker, worker + 1])
        j = latest.find(np.array([worker]))[0]
        prev = (latest.t[j], latest.lon[j], latest.lat[j]) \
            if j >= 0 and latest.t[j] < t[lo] else None
        for i in range(lo, hi):
            if prev is not None:
                d = float(_haversine(prev[1], prev[2], lon[i], lat[i]))
                if d > max_speed * max(t[i] - prev[0], 0) + 1.0:
                    too_fast[i] = True
                    continue
            prev = (t[i], lon[i], lat[i])
    return too_fast


HISTORY_SQL = text("""
INSERT INTO positions (worker_id, recorded_at, geom, speed, bearing, altitude, accuracy,
                       battery, grid_id, attributes)
SELECT u.worker_id, timestamptz 'epoch' + u.t_us * interval '1 microsecond',
       ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326), u.speed, u.bearing, u.altitude,
       u.accuracy, u.battery, u.grid_id, u.attributes
-- (arrays arrive as literals, times as microseconds since the epoch: see ingest; a shorter
-- array is padded with NULLs by unnest)
FROM unnest(CAST(:w AS int[]), CAST(:t AS bigint[]), CAST(:lon AS float8[]),
            CAST(:lat AS float8[]), CAST(:speed AS float8[]), CAST(:bearing AS float8[]),
            CAST(:alt AS float8[]), CAST(:acc AS float8[]), CAST(:batt AS float8[]),
            CAST(:grid AS int[]), CAST(:attrs AS jsonb[]))
    AS u(worker_id, t_us, lon, lat, speed, bearing, altitude, accuracy, battery, grid_id,
         attributes)
ORDER BY 1, 2  -- one lock order for every writer (no deadlocks)
ON CONFLICT DO NOTHING
""")
# Most batches hold no fix already stored: a plain INSERT is tried first (~25 % cheaper than
# ON CONFLICT's speculative insertion per row), and only a batch that meets a stored fix is
# written again, de-duplicated (see _store_history).
HISTORY_SQL_FIRST_TRY = text(HISTORY_SQL.text.replace("ON CONFLICT DO NOTHING", ""))
# the single-fix writer answers each phone: which (worker, µs) pairs were stored
HISTORY_SQL_KEYS = text(HISTORY_SQL.text + """RETURNING worker_id,
    (extract(epoch FROM recorded_at) * 1000000)::bigint AS t_us""")

# (statements on the hot path are parsed for bind parameters once, here)
LATEST_SQL = text("""
WITH newest AS (
    -- each worker's newest fix of the batch; was_in / was_state: the worker's latest row as
    -- this statement found it
    SELECT n.*, timestamptz 'epoch' + n.t_us * interval '1 microsecond' AS recorded_at,
           ST_SetSRID(ST_MakePoint(n.lon, n.lat), 4326) AS geom,
           lp0.in_assigned AS was_in, lp0.state AS was_state,
           EXISTS (SELECT 1 FROM worker_grids wg
                   WHERE wg.worker_id = n.worker_id AND wg.grid_code = n.code) AS in_assigned
    FROM unnest(CAST(:w AS int[]), CAST(:t AS bigint[]), CAST(:lon AS float8[]),
                CAST(:lat AS float8[]), CAST(:speed AS float8[]),
                CAST(:bearing AS float8[]), CAST(:alt AS float8[]),
                CAST(:acc AS float8[]), CAST(:batt AS float8[]), CAST(:grid AS int[]),
                CAST(:attrs AS jsonb[]), CAST(:code AS text[]))
        AS n(worker_id, t_us, lon, lat, speed, bearing, altitude, accuracy, battery, grid_id,
             attributes, code)
    LEFT JOIN latest_positions lp0 ON lp0.worker_id = n.worker_id
), up AS (
    INSERT INTO latest_positions AS lp (worker_id, recorded_at, received_at, geom, speed,
                                        bearing, accuracy, battery, grid_id, altitude,
                                        in_assigned, still_since, still_geom, state, attributes)
    SELECT worker_id, recorded_at, now(), geom, speed, bearing, accuracy, battery, grid_id,
           altitude, in_assigned, recorded_at, geom, 'online', attributes
    FROM newest
    ORDER BY worker_id
    ON CONFLICT (worker_id) DO UPDATE SET
        recorded_at = excluded.recorded_at, received_at = excluded.received_at,
        geom = excluded.geom, speed = excluded.speed, bearing = excluded.bearing,
        accuracy = excluded.accuracy, battery = coalesce(excluded.battery, lp.battery),
        grid_id = excluded.grid_id, altitude = excluded.altitude,
        in_assigned = excluded.in_assigned, attributes = excluded.attributes,
        still_since = CASE WHEN lp.still_geom IS NOT NULL
                            AND ST_DistanceSphere(lp.still_geom, excluded.geom) <= :stop_r
                           THEN lp.still_since ELSE excluded.recorded_at END,
        still_geom = CASE WHEN lp.still_geom IS NOT NULL
                           AND ST_DistanceSphere(lp.still_geom, excluded.geom) <= :stop_r
                          THEN lp.still_geom ELSE excluded.geom END,
        state = CASE WHEN lp.state = 'stopped' AND lp.still_geom IS NOT NULL
                          AND ST_DistanceSphere(lp.still_geom, excluded.geom) <= :stop_r
                     THEN 'stopped' ELSE 'online' END
    WHERE excluded.recorded_at > lp.recorded_at
    RETURNING lp.worker_id, lp.recorded_at, lp.geom, lp.in_assigned, lp.speed, lp.battery,
              lp.state
), moved AS (
    SELECT up.*, n.code, n.was_in, n.was_state
    FROM up JOIN newest n USING (worker_id)
), ev AS (
    INSERT INTO position_events (worker_id, kind, at, grid_code, geom, data)
    SELECT worker_id, kind, recorded_at, code, geom, '{}'::jsonb FROM (
        SELECT m.*, 'grid_exit' AS kind FROM moved m WHERE m.was_in AND NOT m.in_assigned
        UNION ALL
        SELECT m.*, 'grid_enter' FROM moved m WHERE m.was_in = false AND m.in_assigned
        UNION ALL
        SELECT m.*, 'online' FROM moved m WHERE m.was_state = 'offline'
    ) e
    RETURNING id, worker_id, kind, at, grid_code, geom
), pos_notes AS (
    SELECT pg_notify(:channel, json_build_object('t', 'pos', 'p', json_agg(item))::text)
    FROM (SELECT (row_number() OVER () - 1) / :chunk AS chunk,
                 json_build_array(worker_id, round(ST_X(geom)::numeric, 7),
                                  round(ST_Y(geom)::numeric, 7),
                                  floor(extract(epoch FROM recorded_at) * 1000)::bigint,
                                  code, in_assigned, round(speed::numeric, 2), battery,
                                  state) AS item
          FROM moved) x
    GROUP BY chunk
), ev_notes AS (
    SELECT pg_notify(:channel, json_build_object('t', 'evt', 'e', json_agg(item))::text)
    FROM (SELECT (row_number() OVER () - 1) / :echunk AS chunk,
                 json_build_object('id', id, 'worker_id', worker_id, 'kind', kind,
                                   'at', at, 'grid_code', grid_code,
                                   'lon', ST_X(geom), 'lat', ST_Y(geom)) AS item
          FROM ev) x
    GROUP BY chunk
)
SELECT (SELECT count(*) FROM up) AS moved,
       (SELECT coalesce(json_agg(json_build_object('id', id, 'worker_id', worker_id,
                                                   'kind', kind, 'at', at,
                                                   'grid_code', grid_code)
                                 ORDER BY id), '[]') FROM ev)::text AS events,
       (SELECT count(*) FROM pos_notes) + (SELECT count(*) FROM ev_notes) AS notes
""")

REJECT_SQL = """
INSERT INTO position_rejections AS r (day, reason, worker_id, device_id, count)
SELECT * FROM unnest(CAST(:day AS date[]), CAST(:reason AS text[]), CAST(:w AS int[]),
                     CAST(:dev AS text[]), CAST(:n AS bigint[]))
ON CONFLICT (day, reason, (coalesce(worker_id, 0)), device_id)
DO UPDATE SET count = r.count + excluded.count, last_at = now()
"""


def count_rejections(conn: Connection, rejections: Counter, tz=timezone.utc) -> None:
    """``rejections``: (reason, worker_id or None, device_id or '', datetime) → count."""
    if not rejections:
        return
    agg: Counter = Counter()
    for (reason, wid, dev, at), n in rejections.items():
        agg[(at.astimezone(tz).date(), reason, wid, dev)] += n
    keys = list(agg)
    conn.execute(text(REJECT_SQL), {
        "day": [k[0] for k in keys], "reason": [k[1] for k in keys],
        "w": [k[2] for k in keys], "dev": [k[3] for k in keys],
        "n": [agg[k] for k in keys]})


def _pg_ints(values: np.ndarray) -> str:
    """A PostgreSQL array literal of integers. psycopg adapts a list parameter element by
    element in Python; one ``join`` is ~10x cheaper for 10^4 fixes."""
    return "{" + ",".join(map(str, values.tolist())) + "}"


def _pg_floats(values: np.ndarray) -> str:
    """A float8[] literal, NaN → NULL; ``{}`` when every value is NaN (unnest pads it)."""
    missing = np.isnan(values)
    if missing.all():
        return "{}"
    body = ",".join(map(repr, values.tolist()))
    return "{" + (body.replace("nan", "NULL") if missing.any() else body) + "}"


def _pg_text_array(values) -> str:
    """A PostgreSQL array literal of strings (``None`` → NULL), quoted and escaped."""
    return "{" + ",".join([
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values]) + "}"


def _utc(t_us) -> datetime:
    return EPOCH + int(t_us) * MICROSECOND


def _store_history(conn: Connection, params: dict) -> int:
    """Insert the fixes into the history; how many were new (the rest were stored before)."""
    try:
        with conn.begin_nested():  # (a SAVEPOINT: a failed try leaves nothing behind)
            return conn.execute(HISTORY_SQL_FIRST_TRY, params).rowcount
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23505":  # unique_violation: a duplicate
            raise
    return conn.execute(HISTORY_SQL, params).rowcount


def ensure_partitions(conn: Connection, engine: Engine, t_us: np.ndarray) -> None:
    """The day partitions for fixes at ``t_us`` (microseconds since the epoch) exist."""
    tz = DEVICES.timezone(engine)
    hours = np.unique(t_us // 3_600_000_000)  # (a day boundary falls on a whole hour)
    days = {_utc(h * 3_600_000_000).astimezone(tz).date() for h in hours.tolist()}
    known = DEVICES.known_days(engine)
    missing = sorted(days - known)
    if missing:
        conn.execute(text("SELECT ensure_position_partition(d) "
                          "FROM unnest(CAST(:d AS date[])) d"), {"d": missing})
        known.update(missing)


def ingest(conn: Connection, engine: Engine, fixes: list[Fix] | FixColumns, index,
           rules: Rules, devices: dict[str, int] | None = None, now: datetime | None = None,
           allowed_workers: set[int] | None = None, outcomes: bool = True) -> IngestResult:
    """Store ``fixes`` in ``conn``'s transaction (the caller commits); unknown devices are
    counted, never stored. ``allowed_workers``: refuse others (403). ``outcomes``: fill
    ``result.status`` with each fix's outcome ("accepted", "duplicate" or the reason it was
    refused); a batch that only needs the counts skips that work."""
    cols = fixes if isinstance(fixes, FixColumns) else FixColumns.from_fixes(fixes)
    now = now or datetime.now(timezone.utc)
    now_us = (now - EPOCH) // MICROSECOND
    devices = DEVICES.get(engine) if devices is None else devices
    n = len(cols)
    result = IngestResult(received=n, rejected=Counter(), events=[])
    status = np.full(n, "duplicate", dtype=object)
    rejections: Counter = Counter()  # (reason, worker, device, datetime) → count
    t_us = np.where(cols.has_time, cols.t_us, now_us)
    lookup = devices.get
    wid = np.fromiter((lookup(d, -1) for d in cols.device_id), dtype=np.int64, count=n)
    for i in np.flatnonzero(wid < 0).tolist():
        status[i] = "unknown_device"
        result.rejected["unknown_device"] += 1
        rejections[("unknown_device", None, cols.device_id[i][:64], _utc(t_us[i]))] += 1
    known = np.flatnonzero(wid >= 0)
    if allowed_workers is not None and len(known):
        refused = known[~np.isin(wid[known], np.array(sorted(allowed_workers), np.int64))]
        if len(refused):
            raise APIError(403, "forbidden", f"device {cols.device_id[refused[0]]!r} is not "
                           "yours", field="device_id")
    if len(known):
        # (worker, time) order, stable: the order rows are written in and the speed
        # filter walks; of one (worker, time) sent twice the first one counts
        order = known[np.lexsort((t_us[known], wid[known]))]
        w, t = wid[order], t_us[order]
        lon, lat = cols.lon[order], cols.lat[order]
        attrs = [cols.attributes[i] for i in order.tolist()]
        latest = _latest(conn, np.unique(w))
        missing = np.flatnonzero(np.isnan(lon))
        if len(missing):  # a fix without coordinates takes the last known location (Traccar)
            stored = latest.find(w[missing])
            for i, j in zip(missing.tolist(), stored.tolist()):
                if j >= 0:
                    lon[i], lat[i] = latest.lon[j], latest.lat[j]
                    attrs[i] = {**(attrs[i] or {}), "approximate": True}
        reason = np.full(len(order), None, dtype=object)
        reason[np.isnan(lon)] = "no_location"
        reason[(reason == None) & (t > now_us + rules.max_future_s * 1e6)] = "future"  # noqa: E711
        poor = cols.accuracy[order] > rules.max_accuracy_m
        reason[(reason == None) & poor] = "poor_accuracy"  # noqa: E711
        ok = np.flatnonzero(reason == None)  # noqa: E711
        repeated = np.zeros(len(ok), dtype=bool)
        repeated[1:] = (w[ok][1:] == w[ok][:-1]) & (t[ok][1:] == t[ok][:-1])
        ok = ok[~repeated]  # (left "duplicate")
        fast = _speed_filter(w[ok], t[ok] / 1e6, lon[ok], lat[ok], latest, rules.max_speed_ms)
        reason[ok[fast]] = "impossible_speed"
        ok = ok[~fast]
        for i in np.flatnonzero(reason != None).tolist():  # noqa: E711
            status[order[i]] = reason[i]
            result.rejected[reason[i]] += 1
            rejections[(reason[i], int(w[i]), "", _utc(t[i]))] += 1
        if len(ok):
            take = order[ok]
            wk, tk, lon_k, lat_k = w[ok], t[ok], lon[ok], lat[ok]
            routed = index.route_indices(lon_k, lat_k)
            covered = routed >= 0
            grid_ids = np.where(covered, index.ids[np.maximum(routed, 0)], -1)
            newest = np.ones(len(ok), dtype=bool)
            newest[:-1] = wk[1:] != wk[:-1]
            kept_attrs = [attrs[i] for i in ok.tolist()]

            def columns(sel) -> dict:  # the array parameters of ``sel`` (indices into ok)
                chosen = [kept_attrs[i] for i in sel.tolist()]
                return {
                    "w": _pg_ints(wk[sel]), "t": _pg_ints(tk[sel]),
                    "lon": _pg_floats(lon_k[sel]), "lat": _pg_floats(lat_k[sel]),
                    "speed": _pg_floats(cols.speed[take[sel]]),
                    "bearing": _pg_floats(cols.bearing[take[sel]]),
                    "alt": _pg_floats(cols.altitude[take[sel]]),
                    "acc": _pg_floats(cols.accuracy[take[sel]]),
                    "batt": _pg_floats(cols.battery[take[sel]]),
                    "grid": "{" + ",".join([str(g) if g >= 0 else "NULL"
                                            for g in grid_ids[sel].tolist()]) + "}",
                    "attrs": "{}" if not any(chosen) else _pg_text_array(
                        [json.dumps(a) if a else None for a in chosen])}

            ensure_partitions(conn, engine, tk)
            everything = np.arange(len(ok))
            if outcomes:
                stored = set(map(tuple, conn.execute(HISTORY_SQL_KEYS,
                                                     columns(everything)).all()))
                for a, b, i in zip(wk.tolist(), tk.tolist(), take.tolist()):
                    if (a, b) in stored:
                        status[i] = "accepted"
                result.accepted = len(stored)
            else:
                result.accepted = _store_history(conn, columns(everything))
            # Each worker's newest fix moves "latest" (if newer than the stored one; a fix
            # that was a duplicate is already stored, so latest is at least as new)
            last = np.flatnonzero(newest)
            row = conn.execute(LATEST_SQL, {
                **columns(last),
                "code": _pg_text_array([None if routed[i] < 0 else index.codes[routed[i]]
                                        for i in last.tolist()]),
                "stop_r": rules.stop_radius_m, "channel": CHANNEL, "chunk": NOTIFY_CHUNK,
                "echunk": EVENT_CHUNK}).one()
            result.latest_moved = int(row.moved)
            result.events = orjson.loads(row.events)
    result.duplicates = n - result.accepted - sum(result.rejected.values())
    result.status = status.tolist()
    count_rejections(conn, rejections, DEVICES.timezone(engine))
    return result


def with_retry(engine: Engine, work, attempts: int = 3):
    """Run ``work(conn)`` in a transaction, again on a deadlock or serialization failure."""
    from sqlalchemy.exc import OperationalError
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except OperationalError as exc:
            code = getattr(getattr(exc, "orig", None), "sqlstate", None)
            if code not in ("40P01", "40001") or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


class IngestBatcher:
    """Group commit for single device fixes (one writer thread per process and database).

    A request hands its fix over and waits; the writer takes everything queued at that
    moment (up to ``max_batch``), stores it with :func:`ingest` in one transaction and wakes
    each request with its own fix's outcome. Nothing waits artificially: an idle server
    writes a fix as soon as it arrives, a busy one writes what accumulated during the
    previous write — one statement and one commit for many phones.
    """

    def __init__(self, engine: Engine, index_getter, rules: Rules, max_batch: int = 1000):
        self.engine = engine
        self.index_getter = index_getter
        self.rules = rules
        self.max_batch = max_batch
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="gis-ingest", daemon=True)
        self.thread.start()

    def submit(self, fix: Fix, timeout: float = 30.0) -> str:
        slot = [fix, threading.Event(), None, None]
        self.queue.put(slot)
        if not slot[1].wait(timeout):
            raise APIError(503, "busy", "the position writer is overloaded; retry")
        if slot[3] is not None:
            raise slot[3]
        return slot[2]

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                result = with_retry(self.engine, lambda conn: ingest(
                    conn, self.engine, [s[0] for s in batch], self.index_getter(),
                    self.rules))
                for slot, outcome in zip(batch, result.status):
                    slot[2] = outcome
            except Exception as exc:  # every waiting request learns it failed
                for slot in batch:
                    slot[3] = exc
            finally:
                for slot in batch:
                    slot[1].set()


# -- status sweep ------------------------------------------------------------------------------
SWEEP_SQL = """
WITH stale AS (
    SELECT worker_id FROM latest_positions
    WHERE state <> 'offline' AND recorded_at < now() - make_interval(secs => :offline)
    ORDER BY worker_id FOR UPDATE SKIP LOCKED  -- busy rows are being moved right now
), off AS (
    UPDATE latest_positions lp SET state = 'offline' FROM stale
    WHERE lp.worker_id = stale.worker_id
    RETURNING lp.worker_id, lp.recorded_at, lp.geom, lp.grid_id
), still AS (
    SELECT worker_id FROM latest_positions
    WHERE state = 'online' AND recorded_at >= now() - make_interval(secs => :offline)
      AND still_since IS NOT NULL
      AND recorded_at - still_since >= make_interval(secs => :stop_after)
    ORDER BY worker_id FOR UPDATE SKIP LOCKED
), stop AS (
    UPDATE latest_positions lp SET state = 'stopped' FROM still
    WHERE lp.worker_id = still.worker_id
    RETURNING lp.worker_id, lp.recorded_at, lp.still_since, lp.geom, lp.grid_id
), ev AS (
    INSERT INTO position_events (worker_id, kind, at, grid_code, geom, data)
    SELECT o.worker_id, 'offline', now(), g.code, o.geom,
           jsonb_build_object('last_fix_at', o.recorded_at)
    FROM off o LEFT JOIN grids g ON g.id = o.grid_id
    UNION ALL
    SELECT s.worker_id, 'stopped', s.recorded_at, g.code, s.geom,
           jsonb_build_object('still_since', s.still_since)
    FROM stop s LEFT JOIN grids g ON g.id = s.grid_id
    RETURNING id, worker_id, kind, at, grid_code, geom
), notes AS (
    SELECT pg_notify(:channel, json_build_object('t', 'evt', 'e', json_agg(item))::text)
    FROM (SELECT (row_number() OVER () - 1) / :echunk AS chunk,
                 json_build_object('id', id, 'worker_id', worker_id, 'kind', kind, 'at', at,
                                   'grid_code', grid_code, 'lon', ST_X(geom),
                                   'lat', ST_Y(geom)) AS item FROM ev) x
    GROUP BY chunk
)
SELECT (SELECT coalesce(json_agg(json_build_object('id', id, 'worker_id', worker_id,
                                                   'kind', kind, 'at', at,
                                                   'grid_code', grid_code) ORDER BY id),
                        '[]') FROM ev)::text,
       (SELECT count(*) FROM notes)
"""


def sweep_status(conn: Connection, rules: Rules) -> list[dict]:
    """Announce workers that went offline (staleness) or stopped (still for too long while
    online). One sweeper at a time cluster-wide (advisory lock); returns the new events."""
    if not conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext('gis_status_sweep'))"
                             )).scalar():
        return []
    row = conn.execute(text(SWEEP_SQL), {"offline": rules.offline_after_s,
                                         "stop_after": rules.stop_after_s,
                                         "channel": CHANNEL, "echunk": EVENT_CHUNK}).one()
    return json.loads(row[0])


class Sweeper:
    """Run :func:`sweep_status` at most every ``interval`` seconds per process."""

    def __init__(self, interval: float = 15.0):
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def maybe_run(self, engine: Engine, rules: Rules) -> list[dict] | None:
        now = time.monotonic()
        if now - self._last < self.interval or not self._lock.acquire(blocking=False):
            return None
        try:
            self._last = now
            with engine.begin() as conn:
                return sweep_status(conn, rules)
        finally:
            self._lock.release()


SWEEPER = Sweeper()


# -- reads ---------------------------------------------------------------------------------------
def scope_filter(scope_code: str | None, alias: str = "w") -> tuple[str, dict]:
    """SQL condition: the worker is assigned to a grid under ``scope_code`` (by code prefix)."""
    if not scope_code:
        return "true", {}
    from .accounts import scope_prefix
    return (f"EXISTS (SELECT 1 FROM worker_grids sw WHERE sw.worker_id = {alias}.id "
            f"AND left(sw.grid_code, length(:scope_prefix)) = :scope_prefix)",
            {"scope_prefix": scope_prefix(scope_code)})


def check_scope(conn: Connection, scope_code: str | None) -> None:
    """``scope`` must be a current grid visible to the caller (else 404, as RLS hides it)."""
    if scope_code is None:
        return
    found = conn.execute(text("SELECT 1 FROM grids WHERE code = :c AND valid_to IS NULL"),
                         {"c": scope_code}).first()
    if found is None:
        raise not_found("grid", scope_code)


LIVE_SQL = """
SELECT json_build_object('type', 'FeatureCollection', 'generated_at', now(),
                         'offline_after_s', CAST(:offline AS float8),
                         'features', coalesce(json_agg(json_build_object(
    'type', 'Feature', 'id', w.id,
    'geometry', json_build_object('type', 'Point', 'coordinates',
                                  json_build_array(ST_X(lp.geom), ST_Y(lp.geom))),
    'properties', json_build_object(
        'worker_id', w.id, 'role', w.role,
        'recorded_at', lp.recorded_at,
        'status', CASE WHEN now() - lp.recorded_at > make_interval(secs => :offline)
                       THEN 'offline' ELSE 'online' END,
        'stopped', lp.state = 'stopped',
        'grid_code', g.code, 'in_assigned_grid', coalesce(lp.in_assigned, false),
        'speed', lp.speed, 'bearing', lp.bearing, 'accuracy', lp.accuracy,
        'battery', lp.battery)) ORDER BY w.id), '[]'::json))::text
FROM latest_positions lp
JOIN workers w ON w.id = lp.worker_id
LEFT JOIN grids g ON g.id = lp.grid_id
WHERE w.active AND {scope}
"""


def live_geojson(conn: Connection, rules: Rules, scope_code: str | None = None) -> str:
    """Latest positions (GeoJSON text) of the workers visible to ``conn`` under ``scope``."""
    cond, params = scope_filter(scope_code)
    return conn.execute(text(LIVE_SQL.format(scope=cond)),
                        {"offline": rules.offline_after_s, **params}).scalar_one()


def list_workers(conn: Connection, rules: Rules, scope_code: str | None = None) -> list[dict]:
    cond, params = scope_filter(scope_code)
    rows = conn.execute(text(f"""
        SELECT w.id, w.name, w.role, w.phone, w.device_id, w.active,
               d.code AS department,
               coalesce((SELECT json_agg(json_build_object('code', wg.grid_code,
                                                           'responsible', wg.is_responsible)
                                         ORDER BY wg.grid_code)
                         FROM worker_grids wg WHERE wg.worker_id = w.id), '[]') AS grids,
               CASE WHEN lp.worker_id IS NULL THEN 'unknown'
                    WHEN now() - lp.recorded_at > make_interval(secs => :offline)
                    THEN 'offline' ELSE 'online' END AS status,
               lp.recorded_at AS last_fix_at
        FROM workers w
        LEFT JOIN departments d ON d.id = w.department_id
        LEFT JOIN latest_positions lp ON lp.worker_id = w.id
        WHERE {cond}
        ORDER BY w.id
    """), {"offline": rules.offline_after_s, **params}).mappings().all()
    out = []
    for r in rows:
        item = dict(r)
        item["last_fix_at"] = item["last_fix_at"].isoformat() if item["last_fix_at"] else None
        out.append(item)
    return out


def list_events(conn: Connection, since: datetime | None = None, until: datetime | None = None,
                kind: str | None = None, worker_id: int | None = None,
                scope_code: str | None = None, limit: int = 1000, offset: int = 0) -> dict:
    cond, params = scope_filter(scope_code)
    where = [cond]
    if since is not None:
        where.append("e.at >= :since")
        params["since"] = since
    if until is not None:
        where.append("e.at < :until")
        params["until"] = until
    if kind is not None:
        where.append("e.kind = :kind")
        params["kind"] = kind
    if worker_id is not None:
        where.append("e.worker_id = :wid")
        params["wid"] = worker_id
    params.update(limit=limit, offset=offset)
    rows = conn.execute(text(f"""
        SELECT e.id, e.worker_id, w.role, e.kind, e.at, e.grid_code,
               ST_X(e.geom) AS lon, ST_Y(e.geom) AS lat, e.data,
               count(*) OVER () AS matched
        FROM position_events e JOIN workers w ON w.id = e.worker_id
        WHERE {' AND '.join(where)}
        ORDER BY e.at DESC, e.id DESC
        LIMIT :limit OFFSET :offset
    """), params).mappings().all()
    events = []
    for r in rows:
        item = {k: v for k, v in r.items() if k != "matched"}
        item["at"] = item["at"].isoformat()
        events.append(item)
    return {"events": events, "numberMatched": rows[0]["matched"] if rows else 0,
            "numberReturned": len(events)}


EVENT_KINDS = ("grid_exit", "grid_enter", "offline", "online", "stopped")


def rejection_counts(conn: Connection, day=None) -> list[dict]:
    params = {}
    where = "true"
    if day is not None:
        where = "day = :day"
        params["day"] = day
    return [dict(r) for r in conn.execute(text(f"""
        SELECT day::text AS day, reason, sum(count)::bigint AS count
        FROM position_rejections WHERE {where} GROUP BY day, reason ORDER BY day, reason
    """), params).mappings()]


def worker_exists(conn: Connection, worker_id: int) -> None:
    if conn.execute(text("SELECT 1 FROM workers WHERE id = :i"), {"i": worker_id}).first() \
            is None:
        raise not_found("worker", worker_id)


def parse_range(args, default_hours: float = 24.0) -> tuple[datetime, datetime]:
    from .params import timestamp
    until = timestamp(args.get("to"), "to") or datetime.now(timezone.utc)
    since = timestamp(args.get("from"), "from") or (until - timedelta(hours=default_hours))
    if since >= until:
        raise bad_param("from", "from must be before to")
    if until - since > timedelta(days=31):
        raise bad_param("to", "at most 31 days per request")
    return since, until

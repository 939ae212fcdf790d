"""Live positions: ingest (filter, de-duplicate, route to the unit grid, store), status and
geofence events, the live GeoJSON, workers and events listings.

Write path (one transaction per request, one main SQL statement):

1. Device ids → workers (an in-process map, rebuilt when ``grid_state.version`` moves: the
   ``workers`` trigger bumps it).
2. Filtering rules (:class:`Rules`, configurable): timestamps too far in the future, poor
   accuracy, impossible speed from the previous *accepted* point of the same worker (the
   stored latest position or the previous point of the batch). Refused fixes are counted per
   day, reason and worker in ``position_rejections`` and reported in the response.
3. Each fix's unit grid from the process's :class:`~gis_server.core.locate.GridIndex`
   (``route_points``, vectorised).
4. The day partitions are ensured (``ensure_position_partition``), then a single statement
   inserts the history (``ON CONFLICT DO NOTHING`` = de-duplication on (worker, time)), moves
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
from sqlalchemy.engine import Connection, Engine

from ..errors import APIError, bad_param, not_found
from .osmand import Fix

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


def _speed_filter(wid, t, lon, lat, ok, latest: dict, max_speed: float) -> np.ndarray:
    """Mark fixes that imply a speed above ``max_speed`` from the previous accepted fix.

    Vectorised pass against the raw predecessor; workers with a violation are re-checked
    sequentially against the previous *accepted* fix, so one bad jump does not also condemn
    the good fix that follows it.
    """
    n = len(wid)
    too_fast = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return too_fast
    order = idx[np.lexsort((t[idx], wid[idx]))]
    w, tt, x, y = wid[order], t[order], lon[order], lat[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = w[1:] != w[:-1]
    px, py, pt = np.empty_like(x), np.empty_like(y), np.empty_like(tt)
    px[1:], py[1:], pt[1:] = x[:-1], y[:-1], tt[:-1]
    has_prev = ~first
    for i in np.flatnonzero(first):  # the stored latest fix precedes the worker's first one
        prev = latest.get(int(w[i]))
        if prev is not None and prev[0] < tt[i]:
            pt[i], px[i], py[i] = prev
            has_prev[i] = True
    dist = _haversine(px, py, x, y)
    dt = tt - pt
    fast = has_prev & (dist > max_speed * np.maximum(dt, 0) + 1.0)
    if not fast.any():
        return too_fast
    for worker in np.unique(w[fast]):
        sel = np.flatnonzero(w == worker)
        prev = latest.get(int(worker))
        if prev is not None and not prev[0] < tt[sel[0]]:
            prev = None
        for i in sel:
            if prev is not None:
                d = float(_haversine(prev[1], prev[2], x[i], y[i]))
                if d > max_speed * max(tt[i] - prev[0], 0) + 1.0:
                    too_fast[order[i]] = True
                    continue
            prev = (tt[i], x[i], y[i])
    return too_fast


INGEST_SQL = """
WITH b AS (
    -- (arrays arrive as literals, times as microseconds since the epoch: see _pg_array)
    SELECT u.worker_id, timestamptz 'epoch' + u.t_us * interval '1 microsecond' AS recorded_at,
           u.lon, u.lat, u.speed, u.bearing, u.altitude, u.accuracy, u.battery, u.code,
           u.attributes, u.idx
    FROM unnest(CAST(:w AS int[]), CAST(:t AS bigint[]), CAST(:lon AS float8[]),
                CAST(:lat AS float8[]), CAST(:speed AS float8[]),
                CAST(:bearing AS float8[]), CAST(:alt AS float8[]),
                CAST(:acc AS float8[]), CAST(:batt AS float8[]),
                CAST(:code AS text[]), CAST(:attrs AS jsonb[]), CAST(:idx AS int[]))
        AS u(worker_id, t_us, lon, lat, speed, bearing, altitude, accuracy, battery,
             code, attributes, idx)
), checked AS (
    -- impossible speed from the stored latest fix (older ones only); within a batch the
    -- caller has already checked each fix against its predecessor
    SELECT b.*, ST_SetSRID(ST_MakePoint(b.lon, b.lat), 4326) AS geom,
           lp0.in_assigned AS was_in, lp0.state AS was_state,
           coalesce(lp0.recorded_at < b.recorded_at
                    AND ST_DistanceSphere(lp0.geom, ST_SetSRID(ST_MakePoint(b.lon, b.lat), 4326))
                        > :max_speed * extract(epoch FROM b.recorded_at - lp0.recorded_at) + 1,
                    false) AS too_fast
    FROM b LEFT JOIN latest_positions lp0 ON lp0.worker_id = b.worker_id
), fast AS (
    INSERT INTO position_rejections AS r (day, reason, worker_id, device_id, count)
    SELECT CAST(recorded_at AS date), 'impossible_speed', worker_id, '', count(*)
    FROM checked WHERE too_fast GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (day, reason, (coalesce(worker_id, 0)), device_id)
    DO UPDATE SET count = r.count + excluded.count, last_at = now()
    RETURNING count
), bg AS (
    SELECT c.*, g.id AS grid_id,
           EXISTS (SELECT 1 FROM worker_grids wg
                   WHERE wg.worker_id = c.worker_id AND wg.grid_code = c.code) AS in_assigned
    FROM checked c LEFT JOIN grids g ON g.code = c.code AND g.valid_to IS NULL
    WHERE NOT c.too_fast
), ins AS (
    INSERT INTO positions (worker_id, recorded_at, geom, speed, bearing, altitude, accuracy,
                           battery, grid_id, attributes)
    SELECT worker_id, recorded_at, geom, speed, bearing, altitude, accuracy, battery, grid_id,
           attributes
    FROM bg
    ORDER BY worker_id, recorded_at  -- one lock order for every writer (no deadlocks)
    ON CONFLICT DO NOTHING
    RETURNING worker_id, recorded_at
), newest AS (
    SELECT DISTINCT ON (bg.worker_id) bg.*
    FROM bg JOIN ins ON ins.worker_id = bg.worker_id AND ins.recorded_at = bg.recorded_at
    ORDER BY bg.worker_id, bg.recorded_at DESC
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
    -- (was_in / was_state: the worker's latest row as this statement found it)
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
SELECT (SELECT count(*) FROM ins) AS inserted,
       (SELECT count(*) FROM checked WHERE too_fast) AS too_fast,
       (SELECT array_agg(idx) FROM checked WHERE too_fast) AS too_fast_idx,
       (SELECT array_agg(bg.idx) FROM bg JOIN ins ON ins.worker_id = bg.worker_id
                                                AND ins.recorded_at = bg.recorded_at)
           AS inserted_idx,
       (SELECT count(*) FROM up) AS moved,
       (SELECT coalesce(json_agg(json_build_object('id', id, 'worker_id', worker_id,
                                                   'kind', kind, 'at', at,
                                                   'grid_code', grid_code)
                                 ORDER BY id), '[]') FROM ev)::text AS events,
       (SELECT count(*) FROM pos_notes) + (SELECT count(*) FROM ev_notes) AS notes
"""

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


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def _pg_array(values) -> str:
    """A PostgreSQL array literal of numbers (``None`` → NULL). psycopg adapts a list
    parameter element by element in Python; one ``join`` is ~10x cheaper for 10^4 fixes."""
    if None not in values:
        return "{" + ",".join(map(repr, values)) + "}"
    return "{" + ",".join(["NULL" if v is None else repr(v) for v in values]) + "}"


def _pg_text_array(values) -> str:
    """A PostgreSQL array literal of strings (``None`` → NULL), quoted and escaped."""
    return "{" + ",".join([
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values]) + "}"


def _latest(conn: Connection, wids: np.ndarray) -> dict[int, tuple[float, float, float]]:
    """worker id → (epoch seconds, lon, lat) of the stored latest fix, read as one text
    value (no per-row fetch and datetime conversion)."""
    packed = conn.execute(text(
        "SELECT string_agg(concat_ws(' ', worker_id, extract(epoch FROM recorded_at), "
        "ST_X(geom), ST_Y(geom)), ' ') FROM latest_positions "
        "WHERE worker_id = ANY(CAST(:w AS int[]))"),
        {"w": _pg_array(np.unique(wids).tolist())}).scalar()
    if not packed:
        return {}
    a = np.array(packed.split(" "), dtype=float).reshape(-1, 4)
    return dict(zip(a[:, 0].astype(np.int64).tolist(),
                    zip(a[:, 1].tolist(), a[:, 2].tolist(), a[:, 3].tolist())))


def ensure_partitions(conn: Connection, engine: Engine, times) -> None:
    tz = DEVICES.timezone(engine)
    days = {t.astimezone(tz).date() for t in set(times)}  # (a batch repeats its times)
    known = DEVICES.known_days(engine)
    missing = sorted(days - known)
    if missing:
        conn.execute(text("SELECT ensure_position_partition(d) "
                          "FROM unnest(CAST(:d AS date[])) d"), {"d": missing})
        known.update(missing)


def ingest(conn: Connection, engine: Engine, fixes: list[Fix], index, rules: Rules,
           devices: dict[str, int] | None = None, now: datetime | None = None,
           allowed_workers: set[int] | None = None) -> IngestResult:
    """Store ``fixes`` (all devices already known or counted as unknown) in ``conn``'s
    transaction (the caller commits). ``allowed_workers``: refuse others (403)."""
    now = now or datetime.now(timezone.utc)
    devices = DEVICES.get(engine) if devices is None else devices
    result = IngestResult(received=len(fixes), rejected=Counter(), events=[])
    # per input fix: "accepted", "duplicate" or the reason it was refused
    status = result.status = ["duplicate"] * len(fixes)
    rejections: Counter = Counter()
    keep: list[tuple[int, Fix]] = []
    keep_pos: list[int] = []
    for pos, fix in enumerate(fixes):
        wid = devices.get(fix.device_id)
        at = fix.recorded_at or now
        if wid is None:
            status[pos] = "unknown_device"
            result.rejected["unknown_device"] += 1
            rejections[("unknown_device", None, fix.device_id[:64], at)] += 1
            continue
        if allowed_workers is not None and wid not in allowed_workers:
            raise APIError(403, "forbidden", f"device {fix.device_id!r} is not yours",
                           field="device_id")
        keep.append((wid, fix))
        keep_pos.append(pos)
    if keep:
        wids = np.array([w for w, _ in keep], dtype=np.int64)
        latest = {}
        # Each fix is checked against the stored latest one in SQL; Python needs it only
        # to chain a worker's several fixes in this batch, or to place a fix without
        # coordinates.
        if len(np.unique(wids)) < len(wids) or any(f.lat is None for _, f in keep):
            latest = _latest(conn, wids)
        # A fix without coordinates takes the last known location (as in Traccar).
        for i, (wid, fix) in enumerate(keep):
            if fix.lat is None and wid in latest:
                fix.lon, fix.lat = latest[wid][1], latest[wid][2]
                fix.attributes["approximate"] = True
        times = [f.recorded_at or now for _, f in keep]
        t = np.array([x.timestamp() for x in times])
        lon = np.array([np.nan if f.lon is None else f.lon for _, f in keep], dtype=float)
        lat = np.array([np.nan if f.lat is None else f.lat for _, f in keep], dtype=float)
        acc = np.array([np.nan if f.accuracy is None else f.accuracy for _, f in keep])
        reason = np.full(len(keep), None, dtype=object)
        reason[np.isnan(lon)] = "no_location"
        reason[(reason == None) & (t > now.timestamp() + rules.max_future_s)] = "future"  # noqa: E711
        reason[(reason == None) & (acc > rules.max_accuracy_m)] = "poor_accuracy"  # noqa: E711
        fast = _speed_filter(wids, t, lon, lat, reason == None, latest,  # noqa: E711
                             rules.max_speed_ms)
        reason[fast] = "impossible_speed"
        for i in np.flatnonzero(reason != None):  # noqa: E711
            status[keep_pos[i]] = reason[i]
            result.rejected[reason[i]] += 1
            rejections[(reason[i], int(wids[i]), "", times[i])] += 1
        ok = np.flatnonzero(reason == None)  # noqa: E711
        if len(ok):
            codes = index.route_points(lon[ok], lat[ok])
            ensure_partitions(conn, engine, [times[i] for i in ok.tolist()])
            okl = ok.tolist()
            fx = [keep[i][1] for i in okl]
            row = conn.execute(text(INGEST_SQL), {
                "w": _pg_array(wids[ok].tolist()),
                "t": _pg_array([(times[i] - EPOCH) // MICROSECOND for i in okl]),
                "lon": _pg_array(lon[ok].tolist()), "lat": _pg_array(lat[ok].tolist()),
                "speed": _pg_array([f.speed for f in fx]),
                "bearing": _pg_array([f.bearing for f in fx]),
                "alt": _pg_array([f.altitude for f in fx]),
                "acc": _pg_array([f.accuracy for f in fx]),
                "batt": _pg_array([f.battery for f in fx]),
                "code": _pg_text_array([None if c is None else str(c) for c in codes]),
                "attrs": _pg_text_array([json.dumps(f.attributes) if f.attributes else None
                                         for f in fx]),
                "idx": _pg_array([keep_pos[i] for i in okl]),
                "stop_r": rules.stop_radius_m, "channel": CHANNEL, "chunk": NOTIFY_CHUNK,
                "echunk": EVENT_CHUNK, "max_speed": rules.max_speed_ms,
            }).one()
            for i in row.inserted_idx or ():
                status[i] = "accepted"
            for i in row.too_fast_idx or ():
                status[i] = "impossible_speed"
            if row.too_fast:  # (already counted in position_rejections by the statement)
                result.rejected["impossible_speed"] += int(row.too_fast)
            result.accepted = int(row.inserted)
            result.duplicates = len(ok) - int(row.inserted) - int(row.too_fast)
            result.latest_moved = int(row.moved)
            result.events = orjson.loads(row.events)
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

"""Benchmark: live positions on the large city (9,784 workers with device ids).

    python scripts/bench/positions.py [--db gis_bench_large] [--seconds 8] [--skip-patrol]

Runs against ``<db>_positions``, a copy of the city database (``CREATE DATABASE ... TEMPLATE``,
made once and migrated to the newest revision), so the shared benchmark city's schema and data are
left alone. gunicorn runs with 2 workers, ``--worker-class gthread --threads 32`` (what
``/api/v1/stream`` needs). Prints:

* OsmAnd ingest requests/s (wrk, a Lua script cycling device ids, coordinates and times);
* batch ingest positions/s (``POST /api/v1/positions``): terminals uploading the buffer
  they kept while offline (one request per terminal, 1,000 fixes each, two uploads at once),
  and the heavy case of one fix for every worker per request (9,784 fixes, each moving a
  worker's latest position, writing an event and a live-map notification);
* ingest → SSE client delay (p50/p95/max over single OsmAnd fixes);
* live GeoJSON latency for all workers (``GET /api/v1/workers/live``);
* patrol coverage for all 3,000 unit grids for one day: every grid admin (one per unit grid)
  walking 8 hours of 1-minute fixes (3,000 × 480 = 1.44 M positions, generated once).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import requests
from _common import database_url, gunicorn, wrk
from sqlalchemy import text

from gis_server.db import engine_for

PATROL_DAY = date(2026, 1, 15)

LUA = """
local devices = {%(devices)s}
local lons = {%(lons)s}
local lats = {%(lats)s}
local counter = 0
local base = %(base)d
request = function()
  counter = counter + 1
  local i = math.random(#devices)
  local lon = lons[i] + (math.random() - 0.5) * 0.0002
  local lat = lats[i] + (math.random() - 0.5) * 0.0002
  -- epoch milliseconds, unique per request of this thread
  local ts = base + counter * 7 + math.random(0, 6)
  return wrk.format("GET", string.format(
    "/track/osmand?id=%%s&lat=%%.6f&lon=%%.6f&timestamp=%%d&speed=1.2&accuracy=8&batt=77",
    devices[i], lat, lon, ts))
end
"""


def bench_database(source: str) -> str:
    """``<source>_positions`` on the embedded cluster: a template copy, migrated to head."""
    from gis_server.db import migrate

    name = f"{source}_positions"
    admin_url = database_url("postgres")
    admin = engine_for(admin_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                              {"n": name}).first()
        if not exists:
            t0 = time.perf_counter()
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{source}"'))
            print(f"copied {source} → {name} in {time.perf_counter() - t0:.1f} s")
    url = database_url(name)
    migrate(url)
    return url


def admin_token(url: str) -> str:
    from gis_server import config
    from gis_server.core import accounts as acc
    pepper = os.environ.get("TOKEN_PEPPER") or config.load()["TOKEN_PEPPER"]
    with engine_for(url).begin() as conn:
        uid = conn.execute(text("SELECT id FROM users WHERE username = 'bench_positions'")
                           ).scalar()
        if uid is None:
            uid = acc.create_user(conn, "bench_positions", "command_center", None)["id"]
        token, _ = acc.issue_token(conn, uid, pepper, expires_in=timedelta(hours=2))
    return token


def worker_points(url: str):
    with engine_for(url).connect() as conn:
        return conn.execute(text("""
            SELECT w.id, w.device_id, ST_X(p) AS x, ST_Y(p) AS y
            FROM workers w
            JOIN LATERAL (SELECT grid_code FROM worker_grids wg WHERE wg.worker_id = w.id
                          ORDER BY is_responsible DESC LIMIT 1) a ON true
            JOIN grids g ON g.code = a.grid_code AND g.valid_to IS NULL,
            LATERAL ST_PointOnSurface(g.geom) p
            WHERE w.device_id IS NOT NULL AND w.active ORDER BY w.id""")).all()


def warm(base: str, token: str, points) -> None:
    # build each process's grid index and device map before timing
    t = int(time.time()) - 7200
    for i in range(8):
        p = points[i]
        requests.get(base + "/track/osmand", params={"id": p.device_id, "lat": p.y,
                                                     "lon": p.x, "timestamp": t + i}, timeout=60)


def bench_osmand(base: str, points, seconds: int) -> None:
    now_ms = int(time.time() * 1000) - 3_600_000  # an hour ago: in the past, unique per run
    script = LUA % {
        "devices": ",".join(f'"{p.device_id}"' for p in points),
        "lons": ",".join(f"{p.x:.6f}" for p in points),
        "lats": ",".join(f"{p.y:.6f}" for p in points), "base": now_ms}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    result = wrk(base + "/", seconds=seconds, connections=32, threads=2, script=f.name)
    os.unlink(f.name)
    print(f"osmand ingest: {result['rps']:.0f} requests/s (goal >= 1500), "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}")


NOT_STORED: Counter = Counter()  # fixes of the batches that were not stored, by reason


def _post(session, base: str, items: list[dict]) -> int:
    resp = session.post(base + "/api/v1/positions", data=json.dumps({"positions": items}),
                        headers={"Content-Type": "application/json"}, timeout=120)
    assert resp.status_code == 200, resp.text[:500]
    summary = resp.json()
    NOT_STORED.update(summary["rejected_by_reason"])
    NOT_STORED["duplicate"] += summary["duplicates"]
    return summary["accepted"]


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _parallel(jobs: list, uploaders: int) -> tuple[int, float, float]:
    """Run the ``jobs`` (callables returning accepted counts) on ``uploaders`` threads;
    (accepted, wall seconds, server CPU seconds = the machine's busy time minus this
    client's own)."""
    accepted = []
    lock = threading.Lock()

    def run(mine):
        for job in mine:
            n = job()
            with lock:
                accepted.append(n)

    threads = [threading.Thread(target=run, args=(jobs[i::uploaders],))
               for i in range(uploaders)]
    busy0, own0, t0 = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    server_cpu = _busy_seconds() - busy0 - (sum(os.times()[:2]) - own0)
    return sum(accepted), wall, server_cpu


def _cpu_note(accepted: int, server_cpu: float) -> str:
    per_fix = server_cpu / max(accepted, 1) * 1e6
    note = (f"server CPU {per_fix:.1f} µs per fix "
            f"(= {1e6 / per_fix:,.0f} positions/s per core)")
    refused = {reason: n for reason, n in NOT_STORED.items() if n}
    if refused:
        note += f"; not stored: {refused}"
    NOT_STORED.clear()
    return note


def bench_batch_buffers(base: str, token: str, points, per_terminal: int = 1000,
                        terminals: int = 60, uploaders: int = 2) -> None:
    """Terminals that were offline upload their buffers: one request per terminal with its
    last ``per_terminal`` fixes (one every 5 s, ending now), ``uploaders`` requests at once."""
    now_ms = int(time.time() * 1000) - random.randrange(5000)  # (no repeat of an old run)
    chosen = random.sample(points, terminals)
    bodies = [[{"id": p.device_id, "lat": p.y + 1e-6 * (k % 50), "lon": p.x,
                "timestamp": now_ms - 5000 * (per_terminal - k), "accuracy": 10, "batt": 60}
               for k in range(per_terminal)] for p in chosen]
    sessions = [_session(token) for _ in range(uploaders)]
    jobs = [lambda body=body, i=i: _post(sessions[i % uploaders], base, body)
            for i, body in enumerate(bodies)]
    accepted, wall, cpu = _parallel(jobs, uploaders)
    print(f"batch ingest, terminal buffers, {uploaders} upload(s) at once: "
          f"{accepted / wall:,.0f} positions/s (goal >= 50,000) — {terminals} terminals x "
          f"{per_terminal:,} fixes, {accepted:,} accepted in {wall:.2f} s; "
          f"{_cpu_note(accepted, cpu)}")


def bench_batch_gateway(base: str, token: str, points, rounds: int = 4,
                        uploaders: int = 2) -> None:
    """The heavy case: every request carries one fix for each of the 9,784 workers (a
    gateway relaying all phones), so every fix also moves its worker's latest position and
    is pushed to the live map. 30 minutes old: between rounds the status sweep finds the
    workers offline, so each round also writes an "online" event per worker."""
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    jitter_ms = random.randrange(1000)  # (no repeat of an old run's times)

    def body(group, r, offset_s):
        t = int((start + timedelta(seconds=offset_s + 10 * r)).timestamp()) * 1000 + jitter_ms
        return [{"id": p.device_id, "lat": p.y + 1e-5 * r, "lon": p.x, "timestamp": t,
                 "accuracy": 10, "batt": 60} for p in group]

    session = _session(token)
    jobs = [lambda r=r: _post(session, base, body(points, r, 0)) for r in range(rounds)]
    accepted, wall, cpu = _parallel(jobs, 1)
    print(f"batch ingest, one fix per worker, 1 uploader: {accepted / wall:,.0f} positions/s "
          f"— {rounds} requests of {len(points):,} fixes, {accepted:,} accepted, "
          f"{wall / rounds * 1000:.0f} ms per request; {_cpu_note(accepted, cpu)}")
    groups = [points[i::uploaders] for i in range(uploaders)]
    sessions = [_session(token) for _ in range(uploaders)]
    jobs = [lambda g=g, r=r, i=i: _post(sessions[i], base, body(g, r, 300))
            for r in range(rounds) for i, g in enumerate(groups)]
    accepted, wall, cpu = _parallel(jobs, uploaders)
    print(f"batch ingest, one fix per worker, {uploaders} uploaders at once: "
          f"{accepted / wall:,.0f} positions/s — {accepted:,} accepted in {wall:.2f} s; "
          f"{_cpu_note(accepted, cpu)}")


def bench_sse(base: str, token: str, points, n: int = 200) -> None:
    received: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    ready = threading.Event()

    def listen():
        try:
            _listen()
        except requests.RequestException:
            if not stop.is_set():
                raise

    def _listen():
        with requests.get(base + "/api/v1/stream", headers={"Authorization": f"Bearer {token}"},
                          stream=True, timeout=(5, 60)) as resp:
            event = None
            # (large chunks: the snapshot is one ~4 MB line)
            for line in resp.iter_lines(chunk_size=1 << 20, decode_unicode=True):
                if stop.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    if event == "snapshot":
                        ready.set()
                    elif event == "positions":
                        now = time.perf_counter()
                        for p in json.loads(line[5:]):
                            received.setdefault((p[0], p[3]), now)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(60)
    session = requests.Session()
    sent, refused = {}, {}
    base_ms = int(time.time() * 1000)  # real time (epoch ms): always the newest fix
    for i in range(n):
        p = points[(i * 37) % len(points)]
        ts = base_ms + i * 10
        t0 = time.perf_counter()
        resp = session.get(base + "/track/osmand", params={
            "id": p.device_id, "lat": p.y, "lon": p.x, "timestamp": ts}, timeout=10)
        assert resp.status_code == 200
        if resp.headers.get("X-Positions-Accepted") != "1":
            refused[resp.headers.get("X-Positions-Rejected")] = \
                refused.get(resp.headers.get("X-Positions-Rejected"), 0) + 1
            continue
        sent[(p.id, ts)] = t0
        time.sleep(0.01)
    deadline = time.time() + 10
    while time.time() < deadline and not set(sent) <= set(received):
        time.sleep(0.05)
    stop.set()
    delays = sorted((received[k] - t0) * 1000 for k, t0 in sent.items() if k in received)
    if os.environ.get("BENCH_DEBUG"):
        keys = list(sent)
        print("missing idx", [i for i, k in enumerate(keys) if k not in received][:30])
        print("sample received", list(received)[:5], "sample sent", keys[:5])
    missing = len(sent) - len(delays)
    if not delays:
        print(f"ingest -> SSE delay: no fix delivered ({len(sent)} sent, refused by the "
              f"rules: {refused or 'none'})")
        return
    p95 = delays[int(0.95 * (len(delays) - 1))] if delays else float("nan")
    print(f"ingest -> SSE delay: p50 {statistics.median(delays):.1f} ms, p95 {p95:.1f} ms "
          f"(goal < 500), max {delays[-1]:.1f} ms over {len(delays)} fixes, "
          f"{missing} not received; refused by the rules: {refused or 'none'}")


def bench_live(base: str, token: str, runs: int = 10) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    timings, size, n = [], 0, 0
    for _ in range(runs):
        t0 = time.perf_counter()
        resp = session.get(base + "/api/v1/workers/live", timeout=60)
        timings.append((time.perf_counter() - t0) * 1000)
        size, n = len(resp.content), len(resp.json()["features"])
    print(f"live GeoJSON: {n:,} workers, {size / 1e6:.1f} MB, median "
          f"{statistics.median(timings):.0f} ms, max {max(timings):.0f} ms (goal < 200)")


def bench_patrol(url: str) -> None:
    from gis_server.core.patrol import coverage
    engine = engine_for(url)
    with engine.begin() as conn:
        have = conn.execute(text(
            "SELECT count(*) FROM positions WHERE recorded_at >= CAST(:d AS date) "
            "AND recorded_at < CAST(:d AS date) + 1"), {"d": PATROL_DAY}).scalar()
        if have == 0:
            t0 = time.perf_counter()
            conn.execute(text("SELECT ensure_position_partition(:d)"), {"d": PATROL_DAY})
            # every grid admin zig-zags across the bounding box of their unit grid, one fix a
            # minute from 08:00 to 16:00: 480 fixes each
            conn.execute(text("""
                INSERT INTO positions (worker_id, recorded_at, geom, grid_id)
                SELECT w.id, CAST(:d AS date) + time '08:00' + make_interval(mins => i),
                       ST_SetSRID(ST_MakePoint(
                           ST_XMin(g.geom) + (ST_XMax(g.geom) - ST_XMin(g.geom))
                               * abs(((i * 0.037) % 2) - 1),
                           ST_YMin(g.geom) + (ST_YMax(g.geom) - ST_YMin(g.geom))
                               * abs(((i * 0.011) % 2) - 1)), 4326), g.id
                FROM workers w
                JOIN worker_grids wg ON wg.worker_id = w.id AND wg.is_responsible
                JOIN grids g ON g.code = wg.grid_code AND g.valid_to IS NULL,
                generate_series(0, 479) i
                WHERE w.role = 'grid_admin'
                ON CONFLICT DO NOTHING"""), {"d": PATROL_DAY})
            have = conn.execute(text(
                "SELECT count(*) FROM positions WHERE recorded_at >= CAST(:d AS date) "
                "AND recorded_at < CAST(:d AS date) + 1"), {"d": PATROL_DAY}).scalar()
            print(f"generated {have:,} positions for {PATROL_DAY} in "
                  f"{time.perf_counter() - t0:.1f} s")
            conn.execute(text("ANALYZE positions"))
    with engine.connect() as conn:
        walkers = conn.execute(text(
            "SELECT count(DISTINCT worker_id) FROM positions WHERE recorded_at >= "
            "CAST(:d AS date) AND recorded_at < CAST(:d AS date) + 1"), {"d": PATROL_DAY}
        ).scalar()
        t0 = time.perf_counter()
        result = coverage(conn, PATROL_DAY, "unit", 30.0)
        elapsed = time.perf_counter() - t0
    s = result["summary"]
    print(f"patrol coverage: {s['grids']:,} unit grids, {walkers:,} workers x 480 fixes "
          f"({have:,} positions), {elapsed:.1f} s (goal < 30 s); walked {s['walked']:,}, "
          f"area share {s['area_share']}, unwalked {len(result['unwalked']):,}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="gis_bench_large")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--skip-patrol", action="store_true")
    args = ap.parse_args()
    url = bench_database(args.db)
    token = admin_token(url)
    points = worker_points(url)
    print(f"database {url.rsplit('/', 1)[-1]}: {len(points):,} workers with devices")
    with gunicorn(url) as base:
        warm(base, token, points)
        bench_osmand(base, points, args.seconds)
        for uploads in (1, 2, 4):
            bench_batch_buffers(base, token, points, uploaders=uploads)
        bench_batch_gateway(base, token, points)
        bench_live(base, token)
        bench_sse(base, token, points)
    if not args.skip_patrol:
        bench_patrol(url)


if __name__ == "__main__":
    main()

"""A worker's track between two instants: GeoJSON LineString with distance, duration, stops.

Stops: maximal runs of consecutive fixes that all stay within ``stop_radius_m`` of the run's
first fix for at least ``min_stop_s`` (the same idea as Traccar's stop report). The track of
one worker is small (a day of 1-minute fixes is 1,440 points), so the run detection is a
plain scan over the arrays SQL returns.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

from .positions import _haversine, worker_exists


def track(conn: Connection, worker_id: int, since: datetime, until: datetime,
          stop_radius_m: float = 30.0, min_stop_s: float = 300.0) -> dict:
    worker_exists(conn, worker_id)
    rows = conn.execute(text("""
        SELECT extract(epoch FROM recorded_at) AS epoch, ST_X(geom) AS x, ST_Y(geom) AS y,
               speed, battery
        FROM positions
        WHERE worker_id = :w AND recorded_at >= :since AND recorded_at < :until
        ORDER BY recorded_at
    """), {"w": worker_id, "since": since, "until": until}).all()
    t = np.array([float(r.epoch) for r in rows])
    x = np.array([r.x for r in rows], dtype=float)
    y = np.array([r.y for r in rows], dtype=float)
    steps = _haversine(x[:-1], y[:-1], x[1:], y[1:]) if len(rows) > 1 else np.zeros(0)
    stops = []
    i, n = 0, len(rows)
    while i < n:
        j = i + 1
        while j < n and _haversine(x[i], y[i], x[j], y[j]) <= stop_radius_m:
            j += 1
        if t[j - 1] - t[i] >= min_stop_s:
            stops.append({
                "from": _iso(t[i]), "to": _iso(t[j - 1]),
                "duration_s": round(float(t[j - 1] - t[i]), 1),
                "lon": round(float(x[i:j].mean()), 7), "lat": round(float(y[i:j].mean()), 7),
                "points": int(j - i)})
            i = j
        else:
            i += 1
    coords = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(x, y)]
    geometry = None
    if len(coords) == 1:
        geometry = {"type": "Point", "coordinates": coords[0]}
    elif coords:
        geometry = {"type": "LineString", "coordinates": coords}
    return {
        "type": "Feature", "id": worker_id, "geometry": geometry,
        "properties": {
            "worker_id": worker_id, "from": since.isoformat(), "to": until.isoformat(),
            "points": n,
            "distance_m": round(float(steps.sum()), 1),
            "duration_s": round(float(t[-1] - t[0]), 1) if n else 0.0,
            "started_at": _iso(t[0]) if n else None,
            "ended_at": _iso(t[-1]) if n else None,
            # per coordinate, epoch milliseconds (for playback on the map)
            "times": [int(round(v * 1000)) for v in t],
            "stops": stops,
        },
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), tz=timezone.utc).isoformat()

"""Assessment indicators (考核指标) per grid, community, street, department or worker.

One SQL statement (``GROUP BY`` the level), nothing loaded row by row into Python. The cohort
is the incidents *filed* in ``[start, end)``:

* ``filed`` — filed in the period; ``closed`` — of those, verified and closed before ``end``;
* ``closure_rate`` = closed / filed (结案率);
* ``due`` — of those, with a deadline before ``end`` (应结案); ``postponed`` — of the due ones,
  postponed (缓办); ``closed_on_time`` — due, not postponed, closed no later than the deadline;
* ``on_time_closure_rate`` = closed_on_time / (due − postponed) (按期结案率; null when the
  denominator is 0);
* ``rework_rate`` = incidents reworked at least once / filed (返工率);
* ``extension_rate`` = incidents with an approved extension / filed (延期率);
* ``avg_handling_hours`` — mean wall-clock hours from dispatch to closure of the closed ones;
* ``score`` = 100 × Σ wᵢ·componentᵢ / Σ wᵢ over closure_rate, on_time_closure_rate,
  1 − rework_rate, 1 − extension_rate (weights in ``data/indicators.toml``; a null component
  and its weight are left out); ranked by score (ties share a rank).
"""
from __future__ import annotations

import os
import tomllib
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import bad_param
from ..pgcluster import PROJECT_ROOT

LEVELS = {
    "grid": ("u.code", "u.name"),
    "community": ("c.code", "c.name"),
    "street": ("s.code", "s.name"),
    "department": ("d.code", "d.name"),
    "worker": ("CAST(w.id AS text)", "w.name"),
}
COMPONENTS = ("closure_rate", "on_time_closure_rate", "no_rework_rate", "no_extension_rate")
DEFAULT_WEIGHTS = {"closure_rate": 0.3, "on_time_closure_rate": 0.4, "no_rework_rate": 0.2,
                   "no_extension_rate": 0.1}


def weights_file() -> Path:
    return Path(os.environ.get("GIS_INDICATOR_WEIGHTS", PROJECT_ROOT / "data" / "indicators.toml"))


def load_weights(path: str | Path | None = None) -> dict[str, float]:
    p = Path(path) if path else weights_file()
    if not p.exists():
        return dict(DEFAULT_WEIGHTS)
    spec = tomllib.loads(p.read_text(encoding="utf-8")).get("weights", {})
    unknown = set(spec) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown indicator weights {sorted(unknown)} in {p}")
    weights = {k: float(spec.get(k, 0.0)) for k in COMPONENTS}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"indicator weights in {p} must be ≥ 0 and not all 0")
    return weights


SQL = """
WITH base AS (
    SELECT {key} AS key, {name} AS name, i.status, i.closed_at, i.due_at, i.postponed,
           i.rework_count, i.extension_count, i.dispatched_at
    FROM incidents i
    JOIN grids u ON u.id = i.grid_id
    LEFT JOIN grids c ON c.id = u.parent_id
    LEFT JOIN grids s ON s.id = c.parent_id
    LEFT JOIN departments d ON d.id = i.department_id
    LEFT JOIN workers w ON w.id = i.assignee_id
    WHERE i.filed_at >= :start AND i.filed_at < :end
), agg AS (
    SELECT key, min(name) AS name,
           count(*) AS filed,
           count(*) FILTER (WHERE status IN ('closed', 'evaluated') AND closed_at < :end)
               AS closed,
           count(*) FILTER (WHERE due_at < :end) AS due,
           count(*) FILTER (WHERE due_at < :end AND postponed) AS postponed,
           count(*) FILTER (WHERE due_at < :end AND NOT postponed
                            AND status IN ('closed', 'evaluated') AND closed_at <= due_at)
               AS closed_on_time,
           count(*) FILTER (WHERE rework_count > 0) AS reworked,
           count(*) FILTER (WHERE extension_count > 0) AS extended,
           avg(EXTRACT(epoch FROM closed_at - dispatched_at) / 3600.0)
               FILTER (WHERE status IN ('closed', 'evaluated') AND closed_at < :end
                       AND dispatched_at IS NOT NULL) AS avg_handling_hours
    FROM base GROUP BY key
), rates AS (
    SELECT *, closed::float8 / filed AS closure_rate,
           closed_on_time::float8 / NULLIF(due - postponed, 0) AS on_time_closure_rate,
           reworked::float8 / filed AS rework_rate,
           extended::float8 / filed AS extension_rate
    FROM agg
), scored AS (
    SELECT *, 100.0 * (:w_closure * closure_rate
                       + :w_on_time * coalesce(on_time_closure_rate, 0)
                       + :w_rework * (1 - rework_rate) + :w_extension * (1 - extension_rate))
              / NULLIF(:w_closure + :w_rework + :w_extension
                       + CASE WHEN on_time_closure_rate IS NULL THEN 0 ELSE :w_on_time END, 0)
              AS score
    FROM rates
)
SELECT rank() OVER (ORDER BY score DESC NULLS LAST) AS rank, key, name, filed, closed,
       round(closure_rate::numeric, 4)::float8 AS closure_rate, due, postponed,
       closed_on_time, round(on_time_closure_rate::numeric, 4)::float8 AS on_time_closure_rate,
       reworked, round(rework_rate::numeric, 4)::float8 AS rework_rate, extended,
       round(extension_rate::numeric, 4)::float8 AS extension_rate,
       round(avg_handling_hours::numeric, 2)::float8 AS avg_handling_hours,
       round(score::numeric, 2)::float8 AS score
FROM scored
ORDER BY rank, key
"""


def indicators(conn: Connection, level: str, start: datetime, end: datetime,
               weights: dict[str, float] | None = None) -> list[dict]:
    if level not in LEVELS:
        raise bad_param("level", f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if end <= start:
        raise bad_param("to", "to must be after from")
    w = weights or load_weights()
    key, name = LEVELS[level]
    rows = conn.execute(text(SQL.format(key=key, name=name)), {
        "start": start, "end": end, "w_closure": w["closure_rate"],
        "w_on_time": w["on_time_closure_rate"], "w_rework": w["no_rework_rate"],
        "w_extension": w["no_extension_rate"]}).all()
    return [dict(r._mapping) for r in rows]

"""Realistic data for the example notebooks, produced the way the city produces it.

* **History** (the last four weeks, with deadlines met and missed): a CSV of closed, open and
  overdue cases imported with the bulk-import function of ``gis-server incidents import``
  (:func:`gis_server.core.incidents_bulk.import_csv`): the HTTP API stamps every step with
  the current time, so only the import can back-date dispatches and closures (and so produce
  *late* cases). Incidents cluster around one corner of the city (a hot spot).
* **Today's cases** through the public HTTP APIs: grid workers' patrol reports and the command
  centre's intake (``POST /api/v1/incidents``), residents' reports from a civic app (Open311
  ``POST /open311/v2/requests.json`` with a reporter's ``api_key``), each then driven through
  the closed loop with ``POST /api/v1/incidents/ID/actions`` by the role that does it in real
  life: the command centre files, dispatches, verifies, evaluates, postpones, parks; the street
  sub-centre (street admins) starts, reports back, returns, asks for extensions.
* **Patrols** through ``POST /api/v1/positions`` (a terminal's buffer, uploaded by the command
  centre): per worker one batch walking the assigned unit grid, and for some a second batch
  stepping into a neighbouring grid (a ``grid_exit`` event) and for one a third coming back.

Reading the database is allowed here (to pick workers and points); every write goes through
the API or the documented bulk import.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import requests
from pyproj import Transformer
import shapely
from shapely import wkt
from shapely.geometry import Point
from sqlalchemy import text

from gis_server.core import audit
from gis_server.core import accounts as acc
from gis_server.core import categories as cats
from gis_server.core import workcalendar
from gis_server.core.accounts import Principal
from gis_server.core.incidents_bulk import import_csv
from gis_server.core.locate import GridIndex
from gis_server.core.patrol import metric_srid

# (category, weight): everyday city-management cases.
CATEGORIES = [("E0101", 6), ("E0102", 3), ("E0201", 4), ("E0401", 4), ("E0403", 5),
              ("E0303", 2), ("E0601", 2), ("P0101", 2), ("P0104", 2), ("P0303", 3),
              ("P0402", 1), ("E0602", 1)]
# How slow each department is, as the median share of its time limit it uses (> 1 = late).
SLOWNESS = {"sanitation": 0.45, "urban_mgmt": 0.8, "traffic": 0.6, "environment": 0.95,
            "municipal": 0.7, "greenery": 0.5, "civil_affairs": 0.9, "water": 0.8}


@dataclass
class Seeded:
    day: date  # the calendar day (UTC) of the patrols
    history: int = 0  # imported incidents
    live: list[int] = field(default_factory=list)  # incidents created through the API
    open311: list[int] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # final state → count (API cases)
    walkers: list[int] = field(default_factory=list)  # workers who patrolled
    leavers: list[int] = field(default_factory=list)  # workers who left their grid
    position_summaries: list[dict] = field(default_factory=list)


class Api:
    """A bearer-token session on the live server; every call must succeed."""

    def __init__(self, base_url: str, token: str):
        self.base = base_url.rstrip("/")
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body) -> dict:
        r = self.s.post(self.base + path, json=body, timeout=60)
        if r.status_code not in (200, 201):
            raise AssertionError(f"POST {path} → {r.status_code}: {r.text[:500]}")
        return r.json()

    def act(self, incident_id: int, action: str, **extra) -> dict:
        return self.post(f"/api/v1/incidents/{incident_id}/actions",
                         {"action": action, **extra})


def _rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def _units(engine) -> pd.DataFrame:
    rows = _rows(engine, """
        SELECT code, ST_AsText(geom) AS wkt FROM grids
        WHERE level = 'unit' AND valid_to IS NULL ORDER BY code""")
    df = pd.DataFrame(rows, columns=["code", "wkt"])
    df["geom"] = df["wkt"].map(wkt.loads)
    return df


def _points_in(poly, n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    minx, miny, maxx, maxy = poly.bounds
    out: list[tuple[float, float]] = []
    while len(out) < n:
        x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        if poly.buffer(-0.00002).contains(Point(x, y)):  # ~2 m inside: no boundary cases
            out.append((round(x, 7), round(y, 7)))
    return out


# -- history ------------------------------------------------------------------------------
def history_csv(units: pd.DataFrame, now: datetime, rng: np.random.Generator,
                n: int = 900) -> str:
    """Four weeks of cases: more of them near the north-east corner, working-hours reports,
    deadlines from the category's limit on the working calendar, closures on time or late
    by department, a few still open (some overdue), some reworked or postponed."""
    table = cats.load()
    cal = workcalendar.load()
    centroids = np.array([(g.centroid.x, g.centroid.y) for g in units["geom"]])
    hot = centroids[np.argmax(centroids[:, 0] + centroids[:, 1])]
    spread = np.ptp(centroids, axis=0).mean() / 2
    weight = 0.06 + np.exp(-np.linalg.norm(centroids - hot, axis=1) ** 2 / spread ** 2)
    grid_of = rng.choice(len(units), size=n, p=weight / weight.sum())
    codes = [c for c, _ in CATEGORIES]
    cw = np.array([w for _, w in CATEGORIES], float)
    rows = []
    for i, g in enumerate(grid_of):
        (lon, lat), = _points_in(units["geom"].iloc[g], 1, rng)
        category = codes[rng.choice(len(codes), p=cw / cw.sum())]
        cat = table[category]
        day = now - timedelta(days=int(rng.integers(1, 28)))
        local = day.astimezone(cal.tz).replace(hour=int(rng.integers(8, 18)),
                                                minute=int(rng.integers(0, 60)), second=0,
                                                microsecond=0)
        reported = local.astimezone(timezone.utc)
        filed = reported + timedelta(minutes=int(rng.integers(5, 40)))
        dispatched = filed + timedelta(minutes=int(rng.integers(5, 60)))
        amount, unit = cat.limit
        due = cal.add(dispatched, amount, unit)
        share = rng.lognormal(np.log(SLOWNESS.get(cat.department, 0.7)), 0.5)
        closed = dispatched + (due - dispatched) * share
        status = "evaluated" if rng.random() < 0.3 else "closed"
        rework = int(rng.random() < 0.08)
        postponed = bool(rng.random() < 0.04)
        if postponed:
            due = cal.add(due, 1, "d")
        if closed > now or rng.random() < 0.06:  # still being handled (maybe overdue)
            status, closed = ("handling", None)
        rows.append({
            "category": category, "description": f"{cat.name} (history {i})",
            "lon": lon, "lat": lat, "source": "patrol" if rng.random() < 0.8 else "public",
            "status": status, "reported_at": reported.isoformat(),
            "filed_at": filed.isoformat(), "dispatched_at": dispatched.isoformat(),
            "due_at": due.isoformat(), "closed_at": closed.isoformat() if closed else "",
            "postponed": postponed, "rework_count": rework, "extension_count": 0})
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return buf.getvalue()


def import_history(engine, csv_text: str) -> int:
    """What ``gis-server incidents import FILE`` does: all or nothing, audited."""
    who = Principal(user_id=None, username="cli:notebook-seed", role="admin")
    with engine.begin() as conn:
        count = import_csv(conn, GridIndex.build(conn), io.StringIO(csv_text),
                           actor=who.username)
        audit.record(conn, who, "import_incidents", "file", "history.csv", endpoint="cli",
                     detail={"count": count})
    return count


# -- today's cases through the API ----------------------------------------------------------
def street_admins(engine, app, accounts) -> dict[str, str]:
    """A street admin token per street (the fixture has one for the first street; the
    others get an account, as ``gis-server users create ... --role street_admin``)."""
    streets = [r.code for r in _rows(engine, "SELECT code FROM grids WHERE level = 'street' "
                                             "AND valid_to IS NULL ORDER BY code")]
    tokens = {accounts["street_admin"]["scope"]: accounts["street_admin"]["token"]}
    with engine.begin() as conn:
        for code in streets:
            if code in tokens:
                continue
            user = acc.create_user(conn, f"nb_street_{code}", "street_admin", code,
                                   password=f"pw-street-{code}-0123456789")
            tokens[code] = acc.issue_token(conn, user["id"], app.config["TOKEN_PEPPER"])[0]
    return tokens


# Scripts of the closed loop: (actor, action, extra) after intake.
C, S = "command_center", "street"
CLOSED = [(C, "file", {}), (C, "dispatch", {}), (S, "start", {}), (S, "feedback", {}),
          (C, "verify", {})]
SCRIPTS = {
    "closed": CLOSED,
    "evaluated": CLOSED + [(C, "evaluate", {"score": 5})],
    "reworked": CLOSED[:4] + [(C, "rework", {"reason": "garbage still there at re-check"}),
                              (S, "feedback", {}), (C, "verify", {}),
                              (C, "evaluate", {"score": 3})],
    "postponed": CLOSED[:2] + [(C, "postpone", {"reason": "waiting for a crane",
                                                "amount": 1, "unit": "d"})] + CLOSED[2:],
    "extended": CLOSED[:3] + [(S, "extend", {"decision": "request", "amount": 2, "unit": "d",
                                             "reason": "parts on order"}),
                              (C, "extend", {"decision": "approve"})] + CLOSED[3:],
    "returned": CLOSED[:2] + [(S, "return", {"reason": "not our department"}),
                              (C, "dispatch", {"department": "urban_mgmt"})] + CLOSED[2:],
    "handling": CLOSED[:3],
    "dispatched": CLOSED[:2],
    "parked": CLOSED[:2] + [(C, "park", {"reason": "needs a district budget decision"})],
    "rejected": [(C, "reject", {"reason": "duplicate report"})],
    "reported": [],
}
# How often each script is used (about 60 cases).
MIX = (["closed"] * 14 + ["evaluated"] * 8 + ["reworked"] * 5 + ["postponed"] * 3
       + ["extended"] * 3 + ["returned"] * 2 + ["handling"] * 6 + ["dispatched"] * 5
       + ["parked"] * 2 + ["rejected"] * 3 + ["reported"] * 3)


def live_incidents(base_url: str, engine, app, accounts, units: pd.DataFrame,
                   rng: np.random.Generator, seeded: Seeded) -> None:
    command = Api(base_url, accounts["command_center"]["token"])
    worker = Api(base_url, accounts["grid_worker"]["token"])
    streets = {code[:9]: Api(base_url, token)
               for code, token in street_admins(engine, app, accounts).items()}
    reporter_key = accounts["reporter"]["token"]
    codes = [c for c, _ in CATEGORIES]
    order = rng.permutation(len(MIX))
    for k, i in enumerate(order):
        script = MIX[i]
        g = int(rng.integers(len(units))) if k % 4 else int(np.argmax(
            [p.centroid.x + p.centroid.y for p in units["geom"]]))  # the busy corner again
        unit = units.iloc[g]
        (lon, lat), = _points_in(unit["geom"], 1, rng)
        category = codes[int(rng.integers(len(codes)))]
        if k % 3 == 0:  # a resident through a civic app (Open311)
            r = requests.post(f"{base_url}/open311/v2/requests.json", data={
                "api_key": reporter_key, "service_code": category, "lat": lat, "long": lon,
                "description": "reported from the city app", "first_name": "Li",
                "last_name": "Resident", "phone": "13800000000"}, timeout=60)
            assert r.status_code == 201, r.text
            incident_id = r.json()[0]["service_request_id"]
            seeded.open311.append(incident_id)
        else:
            own = unit["code"] == accounts["grid_worker"]["scope"]
            intake = worker if own else command
            body = {"category": category, "lon": lon, "lat": lat,
                    "description": "seen on patrol" if own else "seen on a camera",
                    "source": "patrol" if own else "video"}
            incident_id = intake.post("/api/v1/incidents", body)["id"]
        seeded.live.append(incident_id)
        for who, action, extra in SCRIPTS[script]:
            api = command if who == C else streets[unit["code"][:9]]
            api.act(incident_id, action, **extra)
        final = {"closed": "closed", "evaluated": "evaluated", "reworked": "evaluated",
                 "postponed": "closed", "extended": "closed", "returned": "closed"
                 }.get(script, script)
        seeded.outcomes[final] = seeded.outcomes.get(final, 0) + 1


# -- patrols ---------------------------------------------------------------------------------
def patrol_window(now: datetime) -> tuple[datetime, date]:
    """The end of today's patrols (a few minutes ago, inside the current UTC day)."""
    end = now - timedelta(minutes=3)
    if (end - timedelta(minutes=20)).date() != now.date():
        end = datetime.combine(now.date(), datetime.min.time(), timezone.utc) \
            - timedelta(minutes=5)
    return end, end.date()


def patrols(base_url: str, engine, accounts, units: pd.DataFrame, now: datetime,
            seeded: Seeded) -> None:
    """Grid admins (or the grid's volunteer when the admin has reported before) walk their
    unit grid: a loop 12 m inside the boundary, or half of it, one fix every 20 s. Three unit
    grids are left unwalked; every fourth walker then steps into a neighbouring grid."""
    command = Api(base_url, accounts["command_center"]["token"])
    with engine.connect() as conn:
        srid = metric_srid(conn)
    to_m = Transformer.from_crs(4326, srid, always_xy=True).transform
    to_deg = Transformer.from_crs(srid, 4326, always_xy=True).transform
    walkers = _rows(engine, """
        SELECT DISTINCT ON (wg.grid_code) wg.grid_code, w.id, w.device_id
        FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
        JOIN grids g ON g.code = wg.grid_code AND g.level = 'unit' AND g.valid_to IS NULL
        WHERE w.active AND w.role IN ('grid_admin', 'volunteer')
          AND NOT EXISTS (SELECT 1 FROM latest_positions l WHERE l.worker_id = w.id)
        ORDER BY wg.grid_code, w.role = 'grid_admin' DESC, w.id""")
    end, seeded.day = patrol_window(now)
    by_code = {u.code: u.geom for u in units.itertuples()}
    skip = set(units["code"].iloc[[1, 6, 11]])  # nobody walked these today
    step = timedelta(seconds=20)
    for n, w in enumerate(walkers):
        if w.grid_code in skip or w.grid_code not in by_code:
            continue
        poly = shapely.transform(by_code[w.grid_code],
                                 lambda xy: np.column_stack(to_m(xy[:, 0], xy[:, 1])))
        ring = poly.buffer(-12).exterior
        share = 1.0 if n % 3 else 0.5  # some walk only half of their grid
        fixes = []
        count = 16
        start = end - step * count
        for j in range(count):
            x, y = to_deg(*ring.interpolate(share * j / (count - 1), normalized=True).coords[0])
            fixes.append({"id": w.device_id, "lat": round(y, 7), "lon": round(x, 7),
                          "timestamp": int((start + step * j).timestamp()), "accuracy": 6,
                          "speed": 2.5, "batt": 80 - n})
        seeded.position_summaries.append(command.post("/api/v1/positions",
                                                      {"positions": fixes}))
        seeded.walkers.append(w.id)
        if n % 4 == 0:  # steps into a neighbour's grid: grid_exit
            here = by_code[w.grid_code]
            other = next(u for u in units.itertuples()
                         if u.code != w.grid_code and u.geom.touches(here))
            p = other.geom.representative_point()
            out = [{"id": w.device_id, "lat": round(p.y, 7), "lon": round(p.x, 7),
                    "timestamp": int((end + timedelta(seconds=60)).timestamp()),
                    "accuracy": 8, "speed": 3.0}]
            seeded.position_summaries.append(command.post("/api/v1/positions",
                                                          {"positions": out}))
            seeded.leavers.append(w.id)
            if n == 0:  # and comes back: grid_enter
                back = here.representative_point()
                seeded.position_summaries.append(command.post("/api/v1/positions", {
                    "positions": [{"id": w.device_id, "lat": round(back.y, 7),
                                   "lon": round(back.x, 7), "accuracy": 8,
                                   "timestamp": int((end + timedelta(seconds=100)).timestamp())}]}))
                seeded.leavers.remove(w.id)


def seed(base_url: str, engine, app, accounts, seed_value: int = 8) -> Seeded:
    rng = np.random.default_rng(seed_value)
    now = datetime.now(timezone.utc)
    units = _units(engine)
    seeded = Seeded(day=now.date())
    patrols(base_url, engine, accounts, units, now, seeded)  # positions first: assignees
    seeded.history = import_history(engine, history_csv(units, now, rng))
    live_incidents(base_url, engine, app, accounts, units, rng, seeded)
    return seeded

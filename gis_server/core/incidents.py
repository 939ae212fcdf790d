"""Incidents: intake, routing to the responsible unit grid, and the seven-step closed loop.

Framework-free: every function takes a connection and plain values. The web layer
(``web/incidents.py``, ``web/open311.py``) only parses requests and shapes answers.

**Routing.** The point goes to the current unit grid that contains it (the in-process
:class:`~gis_server.core.locate.GridIndex`); a point on a shared edge goes to the smallest
code and is flagged ``on_boundary`` with the other ``candidates`` for the command centre to
confirm. A point outside every grid but within ``fallback_m`` metres of one goes to the
nearest grid (属地兜底, flagged ``fallback`` with the distance); further away → 422
``not_covered``. The assignee is the grid's on-duty worker: the nearest one with a fresh live
position (``latest_positions``, ≤ :data:`POSITION_FRESH`), else the grid administrator.

**The loop.** :data:`RULES` is the one table of actions: from which states, to which state,
by which roles. Every action writes one ``incident_events`` row and one audit row in the same
transaction as the change; the row is locked (``FOR UPDATE``) and its ``version`` bumped, so
two concurrent actions cannot both apply, and a client sending ``If-Match`` with a stale
version gets 412.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError, bad_param, not_found
from . import categories as cats
from .accounts import Principal
from .locate import GridIndex, NotCovered
from .privacy import mask_name, mask_phone
from .workcalendar import WorkCalendar

SOURCES = ("patrol", "public", "video", "referral")
STATES = ("reported", "filed", "rejected", "dispatched", "handling", "feedback", "closed",
          "evaluated", "parked")
OPEN_STATES = ("reported", "filed", "dispatched", "handling", "feedback")
CLOCK_STATES = ("dispatched", "handling", "feedback")  # the handling clock runs
CIRCULATIONS = ("micro", "small", "big")  # community → street → district
MAX_DESCRIPTION = 4000
DUPLICATE_RADIUS_M = 50.0
POSITION_FRESH = timedelta(minutes=15)

# -- who may do what ------------------------------------------------------------------------
SUPERVISION = frozenset({"community_admin", "street_admin", "command_center", "admin"})
DISPATCHERS = frozenset({"command_center", "street_admin", "admin"})
HANDLERS = frozenset({"grid_worker", "community_admin", "street_admin", "admin"})
INTAKE_ROLES = frozenset({"grid_worker", "community_admin", "street_admin", "command_center",
                          "admin"})


@dataclass(frozen=True)
class Rule:
    from_states: tuple[str, ...]
    to_state: str | None  # None: the state does not change
    roles: frozenset[str]
    needs_reason: bool = False
    doc: str = ""


RULES: dict[str, Rule] = {
    "file": Rule(("reported",), "filed", SUPERVISION, doc="案卷建立: accept as a case"),
    "reject": Rule(("reported",), "rejected", SUPERVISION, True,
                   "invalid or duplicate (``duplicate_of``)"),
    "dispatch": Rule(("filed", "parked"), "dispatched", DISPATCHERS,
                     doc="任务派遣 to the category's department (or ``department``); the "
                         "clock starts"),
    "start": Rule(("dispatched",), "handling", HANDLERS, doc="任务处理 begins"),
    "feedback": Rule(("handling",), "feedback", HANDLERS, doc="处理反馈: work done"),
    "verify": Rule(("feedback",), "closed", SUPERVISION, doc="核实结案: verified, closed"),
    "rework": Rule(("feedback",), "handling", SUPERVISION, True,
                   "返工: verification failed, back to handling (counted; the deadline "
                   "stays)"),
    "return": Rule(("dispatched", "handling"), "filed", HANDLERS, True,
                   "退回: not this department's case, back to dispatch (the clock stops)"),
    "extend": Rule(("dispatched", "handling"), None, HANDLERS | DISPATCHERS, True,
                   "延期: ``decision`` request (handlers, with ``amount``/``unit``) then "
                   "approve or deny (dispatchers)"),
    "postpone": Rule(("dispatched", "handling"), None, DISPATCHERS, True,
                     "缓办: deadline moved by ``amount``/``unit``; excluded from the due count "
                     "of the on-time closure rate"),
    "park": Rule(("filed", "dispatched", "handling", "feedback"), "parked", DISPATCHERS, True,
                 "挂账: unsolvable for now (dispatch re-opens it)"),
    "escalate": Rule(("reported", "filed", "dispatched", "handling", "feedback", "parked"),
                     None, SUPERVISION, doc="micro → small → big circulation"),
    "evaluate": Rule(("closed",), "evaluated", DISPATCHERS | {"community_admin"},
                     doc="综合评价: ``score`` 1–5"),
}
# Which circulation a role may escalate from (a level escalates what it cannot solve).
ESCALATE_FROM = {"community_admin": {"micro"}, "street_admin": {"micro", "small"},
                 "command_center": {"micro", "small"}, "admin": {"micro", "small"}}
EXTEND_DECIDERS = DISPATCHERS

STATUS_NOTES = {
    "reported": "Received, waiting to be filed (已受理待立案).",
    "filed": "Filed, waiting for dispatch (已立案待派遣).",
    "rejected": "Not accepted (不予立案).",
    "dispatched": "Dispatched to the responsible department (已派遣).",
    "handling": "Being handled (处理中).",
    "feedback": "Handled, waiting for verification (待核实).",
    "closed": "Verified and closed (已结案).",
    "evaluated": "Closed and evaluated (已结案已评价).",
    "parked": "Parked as currently unsolvable (挂账).",
}


def rules_table() -> list[dict]:
    """The action rules as rows (the docs and ``GET /api/v1/incidents/actions`` show them)."""
    return [{"action": a, "from": list(r.from_states), "to": r.to_state or "(unchanged)",
             "roles": sorted(r.roles), "reason_required": r.needs_reason, "doc": r.doc}
            for a, r in RULES.items()]


# -- parsing ------------------------------------------------------------------------------
def _text(value, field: str, max_len: int, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise bad_param(field, f"{field} is required")
        return None
    if not isinstance(value, str):
        raise bad_param(field, f"{field} must be a string")
    if len(value) > max_len:
        raise bad_param(field, f"{field} must be at most {max_len} characters, got "
                               f"{len(value)}")
    return value.strip()


def category_of(code, field: str = "category") -> cats.Category:
    if not code:
        raise bad_param(field, f"{field} is required")
    table = cats.load()
    if code not in table:
        raise bad_param(field, f"unknown {field} {code!r}: GET /open311/v2/services.json "
                               "lists them")
    return table[code]


def _number(value, field, lo, hi) -> float:
    from . import params
    return params.number(value, field, lo, hi)


def resolve_location(conn: Connection, lon=None, lat=None, building_id=None,
                     address=None, fields=("lon", "lat", "building_id", "address")
                     ) -> tuple[float, float, str | None]:
    """A point from lon/lat, or a building id, or an address (a building's, exactly or the
    one building containing the text). Returns (lon, lat, address)."""
    f_lon, f_lat, f_building, f_address = fields
    if lon not in (None, "") or lat not in (None, ""):
        return (_number(lon, f_lon, -180, 180), _number(lat, f_lat, -90, 90),
                _text(address, f_address, 500))
    if building_id not in (None, ""):
        try:
            bid = int(building_id)
        except (TypeError, ValueError):
            raise bad_param(f_building, f"{f_building} must be an integer") from None
        row = conn.execute(text("SELECT ST_X(anchor), ST_Y(anchor), address FROM buildings "
                                "WHERE id = :id"), {"id": bid}).one_or_none()
        if row is None:
            raise bad_param(f_building, f"no building {bid}")
        return row[0], row[1], _text(address, f_address, 500) or row[2]
    addr = _text(address, f_address, 500)
    if addr:
        rows = conn.execute(text("""
            (SELECT ST_X(anchor), ST_Y(anchor), address FROM buildings WHERE address = :a
             LIMIT 2)
            UNION ALL
            (SELECT ST_X(anchor), ST_Y(anchor), address FROM buildings
             WHERE address LIKE '%' || :a || '%' LIMIT 2)
        """), {"a": addr}).all()
        exact = [r for r in rows if r[2] == addr]
        hits = exact or rows
        if not hits:
            raise bad_param(f_address, f"no building has the address {addr!r}")
        if len({(r[0], r[1]) for r in hits}) > 1:
            raise bad_param(f_address, f"the address {addr!r} matches several buildings: "
                                       "give coordinates or a building id")
        return hits[0][0], hits[0][1], addr
    raise bad_param(f_lon, f"a location is required: {f_lon}/{f_lat}, {f_building} or "
                           f"{f_address}")


def validate_attributes(category: cats.Category, values: dict | None,
                        field: str = "attributes") -> dict:
    """Answers to the category's attributes (Open311 ``attribute[code]``)."""
    values = values or {}
    if not isinstance(values, dict):
        raise bad_param(field, f"{field} must be an object")
    known = {a["code"]: a for a in category.attributes}
    out = {}
    for code, value in values.items():
        where = f"attribute[{code}]" if field == "attribute" else f"{field}.{code}"
        if code not in known:
            raise bad_param(where, f"service {category.code} has no attribute {code!r}")
        a = known[code]
        keys = {v["key"] for v in a["values"]}
        if a["datatype"] == "multivaluelist":
            items = value if isinstance(value, list) else [value]
            if not all(str(v) in keys for v in items):
                raise bad_param(where, f"{where} must be among {sorted(keys)}")
            out[code] = [str(v) for v in items]
        elif a["datatype"] == "singlevaluelist":
            if isinstance(value, list) or str(value) not in keys:
                raise bad_param(where, f"{where} must be one of {sorted(keys)}")
            out[code] = str(value)
        elif a["datatype"] == "number":
            out[code] = _number(value, where, None, None)
        else:
            out[code] = _text(str(value) if not isinstance(value, str) else value, where,
                              MAX_DESCRIPTION)
    for code, a in known.items():
        if a["required"] and out.get(code) in (None, "", []):
            where = f"attribute[{code}]" if field == "attribute" else f"{field}.{code}"
            raise bad_param(where, f"{where} is required for service {category.code}")
    return out


# -- routing -------------------------------------------------------------------------------
def route(conn: Connection, index: GridIndex, lon: float, lat: float,
          fallback_m: float) -> dict:
    """The responsible unit grid code and flags (see the module docstring)."""
    with contextlib.suppress(NotCovered):  # outside every grid: the nearest one below
        hit = index.locate(lon, lat)
        return {"code": hit["unit"]["code"], "on_boundary": hit["on_boundary"],
                "candidates": [c["code"] for c in hit["candidates"]], "fallback": False,
                "distance_m": 0.0}
    row = conn.execute(text("""
        WITH q AS (SELECT ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS pt),
        k AS (SELECT p.grid_id FROM grid_parts p, q WHERE p.level = 'unit'
              ORDER BY p.geom <-> q.pt LIMIT 8)
        SELECT g.code, ST_Distance(g.geom::geography, q.pt::geography) AS d
        FROM (SELECT DISTINCT grid_id FROM k) k JOIN grids g ON g.id = k.grid_id, q
        WHERE g.valid_to IS NULL
        ORDER BY d, g.code LIMIT 1
    """), {"lon": lon, "lat": lat}).one_or_none()
    if row is None or row.d > fallback_m:
        raise APIError(422, "not_covered",
                       f"no unit grid covers ({lon}, {lat}) or lies within {fallback_m:g} m",
                       field="location", lon=lon, lat=lat,
                       nearest_m=None if row is None else round(row.d, 1))
    return {"code": row.code, "on_boundary": False, "candidates": [], "fallback": True,
            "distance_m": round(row.d, 1)}


# -- intake --------------------------------------------------------------------------------
_INSERT_CTES = """
WITH pt AS (SELECT ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS pt),
g AS (SELECT id FROM grids WHERE code = :code AND valid_to IS NULL),
d AS (SELECT id FROM departments WHERE code = :dept),
a AS (
    SELECT w.id FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
    LEFT JOIN latest_positions lp ON lp.worker_id = w.id AND lp.recorded_at > :fresh, pt
    WHERE wg.grid_code = :code AND w.active
    ORDER BY lp.geom IS NULL, ST_Distance(lp.geom, pt.pt), w.role <> 'grid_admin',
             NOT wg.is_responsible, w.id
    LIMIT 1),
dup AS (
    -- The 10 nearest open incidents of the category (GiST KNN, stops early), then the exact
    -- geodesic distance for those few only.
    SELECT near.id, round(ST_Distance(near.geom::geography, pt.pt::geography)::numeric, 1) AS m
    FROM (
        SELECT i.id, i.geom FROM incidents i
        WHERE i.category = :category AND i.status IN ('reported', 'filed', 'dispatched',
              'handling', 'feedback')
          AND i.geom && ST_Expand(ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), :deg)
        ORDER BY i.geom <-> ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) LIMIT 10
    ) near, pt
    WHERE ST_DWithin(near.geom::geography, pt.pt::geography, :dup_m)
    ORDER BY 2, 1),
ins AS (
    INSERT INTO incidents (category, description, geom, address, source, reporter,
                           reporter_contact, status, grid_id, department_id, assignee_id,
                           reported_at, updated_at, time_limit, flags, attributes, media_url,
                           photo_path, photo_sha256, open311_token)
    SELECT :category, :description, pt.pt, :address, :source, :reporter, :contact,
           'reported', (SELECT id FROM g), (SELECT id FROM d), (SELECT id FROM a), :now, :now,
           :time_limit,
           CAST(:flags AS jsonb) || CASE WHEN EXISTS (SELECT 1 FROM dup) THEN
               jsonb_build_object('possible_duplicates',
                                  (SELECT jsonb_agg(jsonb_build_object('id', id, 'distance_m', m))
                                   FROM dup)) ELSE '{}'::jsonb END,
           CAST(:attributes AS jsonb), :media_url, :photo_path, :photo_sha256, :token
    FROM pt
    RETURNING *),
ev AS (
    INSERT INTO incident_events (incident_id, at, actor, action, from_state, to_state, data)
    SELECT id, :now, :actor, 'report', NULL, 'reported', CAST(:evdata AS jsonb) FROM ins
    RETURNING data)
"""
INSERT_SQL = text(_INSERT_CTES + "SELECT id FROM ins")

# Intake in one statement (one round trip): the incident, its first event, the audit row (the
# columns gis_server.core.audit.record writes) and the 201 body's row — the new incident with
# its grid chain, department and assignee, as one jsonb value (one column: cheap to decode).
INTAKE_SQL = text(_INSERT_CTES + """,
au AS (
    INSERT INTO audit_log (user_id, username, role, action, object_type, object_id,
                           remote_addr, endpoint, detail)
    SELECT :audit_uid, :actor, :audit_role, 'create_incident', 'incident', id::text,
           :audit_addr, :audit_endpoint, CAST(:audit_detail AS jsonb) FROM ins)
SELECT to_jsonb(i) - 'geom' || jsonb_build_object(
           'grid_code', u.code, 'grid_name', u.name, 'community_code', c.code,
           'community_name', c.name, 'street_code', s.code, 'street_name', s.name,
           'department_code', d.code, 'department_name', d.name, 'assignee_name', w.name,
           'assignee_role', w.role, 'assignee_phone', w.phone,
           'event_data', (SELECT data FROM ev)) AS row,
       ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat
FROM ins i
LEFT JOIN grids u ON u.id = i.grid_id
LEFT JOIN grids c ON c.id = u.parent_id
LEFT JOIN grids s ON s.id = c.parent_id
LEFT JOIN departments d ON d.id = i.department_id
LEFT JOIN workers w ON w.id = i.assignee_id
""")


def _intake_params(conn: Connection, index: GridIndex, who: Principal, *, category: str,
                   description, lon: float, lat: float, address: str | None = None,
                   source: str = "patrol", reporter=None, reporter_contact=None,
                   attributes: dict | None = None, media_url: str | None = None,
                   photo: dict | None = None, open311_token: str | None = None,
                   fallback_m: float = 200.0, now: datetime | None = None,
                   fields: dict | None = None) -> dict:
    """Validate and route; the bind parameters of :data:`INSERT_SQL` / :data:`INTAKE_SQL`."""
    fields = fields or {}
    cat = category_of(category, fields.get("category", "category"))
    desc = _text(description, fields.get("description", "description"), MAX_DESCRIPTION,
                 required=True)
    if source not in SOURCES:
        raise bad_param("source", f"source must be one of {', '.join(SOURCES)}")
    reporter = _text(reporter, fields.get("reporter", "reporter"), 200)
    reporter_contact = _text(reporter_contact, fields.get("reporter_contact",
                                                          "reporter_contact"), 200)
    if media_url is not None:
        media_url = _text(media_url, "media_url", 2000)
        if media_url and not media_url.startswith(("http://", "https://")):
            raise bad_param("media_url", "media_url must be an http(s) URL")
    hit = route(conn, index, lon, lat, fallback_m)
    flags = {}
    if hit["on_boundary"]:
        flags.update(on_boundary=True, candidates=hit["candidates"])
    if hit["fallback"]:
        flags.update(fallback=True, fallback_distance_m=hit["distance_m"])
    now = now or datetime.now(timezone.utc)
    deg = DUPLICATE_RADIUS_M / 111_320 / max(0.01, math.cos(math.radians(lat))) * 1.01
    return {
        "lon": lon, "lat": lat, "code": hit["code"], "dept": cat.department,
        "fresh": now - POSITION_FRESH, "category": cat.code, "description": desc,
        "address": address, "source": source, "reporter": reporter,
        "contact": reporter_contact, "now": now, "time_limit": cat.time_limit,
        "flags": json.dumps(flags), "deg": deg, "dup_m": DUPLICATE_RADIUS_M,
        "attributes": json.dumps(attributes or {}, ensure_ascii=False),
        "media_url": media_url, "photo_path": (photo or {}).get("path"),
        "photo_sha256": (photo or {}).get("sha256"), "token": open311_token,
        "actor": who.username, "evdata": json.dumps({"grid": hit["code"], **flags}),
    }


def create_incident(conn: Connection, index: GridIndex, who: Principal, **values) -> int:
    """Validate, route and insert one incident (+ its first event) on ``conn``; return its id.

    The caller commits (together with its audit row). ``photo``: {path, sha256} of a stored
    upload. ``fields`` renames fields in error messages (Open311 names). Keyword arguments:
    see :func:`_intake_params`.
    """
    return conn.execute(INSERT_SQL, _intake_params(conn, index, who, **values)).scalar_one()


def intake(conn: Connection, index: GridIndex, who: Principal, *, audit: dict,
           mode: str = "unmasked", **values) -> dict:
    """:func:`create_incident`, its audit row and the incident as :func:`get_incident` shows
    it, in one statement (nothing is read back). The caller commits.

    ``audit``: {"remote_addr", "endpoint", "detail"} of the audit row (action
    ``create_incident``, the caller's identity from ``who``)."""
    p = _intake_params(conn, index, who, **values)
    p.update(audit_uid=who.user_id, audit_role=who.role, audit_addr=audit.get("remote_addr"),
             audit_endpoint=audit.get("endpoint"),
             audit_detail=json.dumps(audit.get("detail") or {}, ensure_ascii=False))
    row = conn.execute(INTAKE_SQL, p).one()
    r = row.row
    r["lon"], r["lat"] = row.lon, row.lat
    for key in TIMESTAMPS:  # jsonb spells them its own way: as the detail does
        if isinstance(r.get(key), str):
            r[key] = datetime.fromisoformat(r[key])
    timeline = [{"at": _iso(p["now"]), "actor": who.username, "action": "report",
                 "from": None, "to": "reported", "note": None, "data": r.pop("event_data")}]
    return personal(_detail(r, timeline, who.role, p["now"]), mode)


# -- reading --------------------------------------------------------------------------------
DETAIL_SQL = """
SELECT i.*, ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat,
       u.code AS grid_code, u.name AS grid_name, c.code AS community_code,
       c.name AS community_name, s.code AS street_code, s.name AS street_name,
       d.code AS department_code, d.name AS department_name,
       w.name AS assignee_name, w.role AS assignee_role, w.phone AS assignee_phone
FROM incidents i
LEFT JOIN grids u ON u.id = i.grid_id
LEFT JOIN grids c ON c.id = u.parent_id
LEFT JOIN grids s ON s.id = c.parent_id
LEFT JOIN departments d ON d.id = i.department_id
LEFT JOIN workers w ON w.id = i.assignee_id
WHERE i.id = :id
"""
DETAIL = text(DETAIL_SQL)
DETAIL_FOR_UPDATE = text(DETAIL_SQL + " FOR UPDATE OF i")
EVENTS = text("""
    SELECT id, at, actor, action, from_state, to_state, note, data
    FROM incident_events WHERE incident_id = :id ORDER BY at, id
""")
# The incidents' timestamp columns (jsonb gives them as text).
TIMESTAMPS = ("reported_at", "filed_at", "dispatched_at", "due_at", "closed_at",
              "updated_at", "started_at", "feedback_at", "evaluated_at", "escalated_at")


def _iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


def is_overdue(status: str, due_at: datetime | None, now: datetime) -> bool:
    return status in CLOCK_STATES and due_at is not None and due_at < now


def allowed_actions(status: str, role: str | None) -> list[str]:
    return [a for a, r in RULES.items() if status in r.from_states and role in r.roles]


def get_incident(conn: Connection, incident_id: int, mode: str = "unmasked",
                 role: str | None = None, now: datetime | None = None,
                 for_update: bool = False) -> dict:
    """The incident with its grid, department, assignee, deadline and timeline (404 if not
    visible). ``mode``: personal-data mode of the caller (unmasked / masked / removed)."""
    row = conn.execute(DETAIL_FOR_UPDATE if for_update else DETAIL,
                       {"id": incident_id}).one_or_none()
    if row is None:
        raise not_found("incident", incident_id)
    events = conn.execute(EVENTS, {"id": incident_id}).all()
    timeline = [{"at": _iso(e.at), "actor": e.actor, "action": e.action,
                 "from": e.from_state, "to": e.to_state, "note": e.note, "data": e.data}
                for e in events]
    return personal(_detail(row._mapping, timeline, role, now or datetime.now(timezone.utc)),
                    mode)


def _detail(r, timeline: list[dict], role: str | None, now: datetime) -> dict:
    """The incident's answer from its row (DETAIL_SQL's columns) and its timeline."""
    cat = cats.load().get(r["category"])
    return {
        "id": r["id"], "status": r["status"],
        "status_notes": STATUS_NOTES.get(r["status"]),
        "category": cat.to_dict() if cat else {"code": r["category"]},
        "description": r["description"],
        "location": {"lon": r["lon"], "lat": r["lat"]},
        "address": r["address"], "source": r["source"],
        "reporter": r["reporter"], "reporter_contact": r["reporter_contact"],
        "grid": {"code": r["grid_code"], "name": r["grid_name"],
                 "community": {"code": r["community_code"], "name": r["community_name"]},
                 "street": {"code": r["street_code"], "name": r["street_name"]}},
        "department": ({"code": r["department_code"], "name": r["department_name"]}
                       if r["department_code"] else None),
        "assignee": ({"id": r["assignee_id"], "name": r["assignee_name"],
                      "role": r["assignee_role"], "phone": r["assignee_phone"]}
                     if r["assignee_id"] else None),
        "circulation": r["circulation"], "time_limit": r["time_limit"],
        "reported_at": _iso(r["reported_at"]), "filed_at": _iso(r["filed_at"]),
        "dispatched_at": _iso(r["dispatched_at"]), "due_at": _iso(r["due_at"]),
        "closed_at": _iso(r["closed_at"]), "updated_at": _iso(r["updated_at"]),
        "overdue": is_overdue(r["status"], r["due_at"], now),
        "rework_count": r["rework_count"], "return_count": r["return_count"],
        "extension_count": r["extension_count"], "postponed": r["postponed"],
        "extension_request": r["extension_request"], "evaluation": r["evaluation"],
        "duplicate_of": r["duplicate_of"], "flags": r["flags"], "attributes": r["attributes"],
        "media_url": r["media_url"],
        "photo": {"sha256": r["photo_sha256"]} if r["photo_sha256"] else None,
        "version": r["version"],
        "allowed_actions": allowed_actions(r["status"], role),
        "timeline": timeline,
    }


def personal(incident: dict, mode: str) -> dict:
    """Reporter name/contact, the exact address and the assignee's phone per ``mode``."""
    if mode == "unmasked":
        return incident
    out = dict(incident)
    assignee = dict(out["assignee"]) if out.get("assignee") else None
    if mode == "masked":
        out["reporter"] = mask_name(out.get("reporter"))
        out["reporter_contact"] = mask_phone(out.get("reporter_contact"))
        out["address"] = "***" if out.get("address") else None
        if assignee:
            assignee["name"] = mask_name(assignee.get("name"))
            assignee["phone"] = mask_phone(assignee.get("phone"))
    else:
        for key in ("reporter", "reporter_contact", "address"):
            out.pop(key, None)
        if assignee:
            assignee = {"id": assignee["id"], "role": assignee["role"]}
    out["assignee"] = assignee
    out["personal_data"] = mode
    return out


def has_personal(incident: dict) -> bool:
    return any(incident.get(k) for k in ("reporter", "reporter_contact", "address"))


LIST_PROPS = """
    i.id, i.status, i.category, cn.value AS category_name, i.source, i.circulation,
    u.code AS grid_code, d.code AS department_code, i.reported_at, i.dispatched_at, i.due_at,
    i.closed_at, i.rework_count, i.postponed,
    (i.status IN ('dispatched', 'handling', 'feedback') AND i.due_at < :now) AS overdue,
    (i.flags ? 'on_boundary') AS on_boundary, (i.flags ? 'fallback') AS fallback, i.version,
    i.geom
"""


def list_filters(status=None, category=None, grid=None, overdue=None, bbox=None,
                 start=None, end=None) -> tuple[list[str], dict]:
    where, p = [], {}
    if status:
        where.append("i.status = ANY(:status)")
        p["status"] = list(status)
    if category:
        where.append("i.category = ANY(:category)")
        p["category"] = list(category)
    if grid:
        where.append("starts_with(u.code, :grid)")
        p["grid"] = grid
    if overdue is not None:
        cond = "(i.status IN ('dispatched', 'handling', 'feedback') AND i.due_at < :now)"
        where.append(cond if overdue else f"NOT {cond}")
    if bbox:
        where.append("i.geom && ST_MakeEnvelope(:minx, :miny, :maxx, :maxy, 4326)")
        p.update(zip(("minx", "miny", "maxx", "maxy"), bbox))
    if start:
        where.append("i.reported_at >= :start")
        p["start"] = start
    if end:
        where.append("i.reported_at < :end")
        p["end"] = end
    return where, p


def list_incidents(conn: Connection, *, limit: int = 1000, offset: int = 0,
                   now: datetime | None = None, **filters) -> dict:
    """A GeoJSON FeatureCollection (built in PostGIS) with ``numberMatched``."""
    from .features import feature_collection
    where, p = list_filters(**filters)
    p.update(now=now or datetime.now(timezone.utc), limit=limit, offset=offset,
             names=json.dumps({c.code: c.name for c in cats.load().values()},
                              ensure_ascii=False))
    joins = """
        FROM incidents i LEFT JOIN grids u ON u.id = i.grid_id
        LEFT JOIN departments d ON d.id = i.department_id
        LEFT JOIN jsonb_each_text(CAST(:names AS jsonb)) cn ON cn.key = i.category
    """
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    fc = feature_collection(conn, f"SELECT {LIST_PROPS} {joins} {clause} "
                                  "ORDER BY i.id DESC LIMIT :limit OFFSET :offset", p)
    fc["numberMatched"] = conn.execute(text(f"SELECT count(*) {joins} {clause}"),
                                       p).scalar_one()
    fc["numberReturned"] = len(fc["features"])
    return fc


# -- actions --------------------------------------------------------------------------------
def _limit_param(body: dict) -> tuple[float, str]:
    unit = body.get("unit", "d")
    if unit not in ("h", "d"):
        raise bad_param("unit", "unit must be 'h' (working hours) or 'd' (working days)")
    amount = _number(body.get("amount"), "amount", 0.5 if unit == "h" else 1, 365)
    if unit == "d" and amount != int(amount):
        raise bad_param("amount", "amount must be a whole number of working days")
    return amount, unit


def apply_action(conn: Connection, who: Principal, incident_id: int, body: dict,
                 calendar: WorkCalendar, if_match: int | None = None,
                 now: datetime | None = None) -> dict:
    """Apply one action; return {"from", "to", "event"}. The caller audits and commits.

    409 names the allowed actions when the transition is illegal; 412 when ``if_match``
    (the version the client saw) is stale; 403 when the caller's role may not.
    """
    if not isinstance(body, dict):
        raise bad_param("body", "the body must be a JSON object")
    action = body.get("action")
    if action not in RULES:
        raise bad_param("action", f"action must be one of {', '.join(RULES)}, got {action!r}")
    rule = RULES[action]
    now = now or datetime.now(timezone.utc)
    row = conn.execute(text("""
        SELECT i.id, i.status, i.version, i.category, i.circulation, i.due_at, i.time_limit,
               i.extension_request, i.department_id
        FROM incidents i WHERE i.id = :id FOR UPDATE
    """), {"id": incident_id}).one_or_none()
    if row is None:
        raise not_found("incident", incident_id)
    if if_match is not None and if_match != row.version:
        raise APIError(412, "precondition_failed",
                       f"incident {incident_id} is at version {row.version}, not {if_match}: "
                       "reload it and try again", field="If-Match", version=row.version)
    if row.status not in rule.from_states:
        allowed = allowed_actions(row.status, who.role)
        raise APIError(409, "illegal_transition",
                       f"cannot {action} an incident that is {row.status}; allowed: "
                       f"{', '.join(allowed) or 'none'}", field="action",
                       state=row.status, allowed=allowed)
    if who.role not in rule.roles:
        raise APIError(403, "forbidden", f"role {who.role} may not {action} "
                                         f"(roles: {', '.join(sorted(rule.roles))})",
                       field="action")
    reason = body.get("reason")
    note = _text(body.get("note"), "note", 2000)
    if rule.needs_reason and not (action == "extend" and body.get("decision") != "request"):
        reason = _text(reason, "reason", 2000, required=True)
    else:
        reason = _text(reason, "reason", 2000)
    sets: dict[str, object] = {}
    data: dict[str, object] = {}
    to_state = rule.to_state or row.status

    if action == "file":
        sets["filed_at"] = now
    elif action == "reject":
        dup = body.get("duplicate_of")
        if dup is not None:
            try:
                dup = int(dup)
            except (TypeError, ValueError):
                raise bad_param("duplicate_of", "duplicate_of must be an incident id") from None
            if dup == incident_id or conn.execute(text(
                    "SELECT 1 FROM incidents WHERE id = :d"), {"d": dup}).scalar() is None:
                raise bad_param("duplicate_of", f"no other incident {dup}")
            sets["duplicate_of"] = dup
            data["duplicate_of"] = dup
        sets["closed_at"] = now
    elif action == "dispatch":
        dept_code = body.get("department")
        if dept_code:
            dept = conn.execute(text("SELECT id FROM departments WHERE code = :c"),
                                {"c": dept_code}).scalar()
            if dept is None:
                raise bad_param("department", f"no department {dept_code!r}")
            sets["department_id"] = dept
            data["department"] = dept_code
        elif row.department_id is None:
            raise bad_param("department", "the category's department is unknown here: "
                                          "name one")
        if body.get("assignee_id") is not None:
            aid = body["assignee_id"]
            if not isinstance(aid, int) or conn.execute(text(
                    "SELECT 1 FROM workers WHERE id = :w AND active"), {"w": aid}).scalar() \
                    is None:
                raise bad_param("assignee_id", f"no active worker {aid!r} visible to you")
            sets["assignee_id"] = aid
            data["assignee_id"] = aid
        amount, unit = cats.parse_limit(row.time_limit or "1d") if row.time_limit \
            else (1, "d")
        sets.update(dispatched_at=now, due_at=calendar.add(now, amount, unit),
                    postponed=False, extension_request=None)
        data["due_at"] = sets["due_at"].isoformat()
    elif action == "start":
        sets["started_at"] = now
    elif action == "feedback":
        sets["feedback_at"] = now
    elif action == "verify":
        sets["closed_at"] = now
        data["on_time"] = row.due_at is None or now <= row.due_at
    elif action == "rework":
        sets["rework_count"] = text("rework_count + 1")
    elif action == "return":
        sets.update(dispatched_at=None, due_at=None, department_id=None,
                    return_count=text("return_count + 1"), extension_request=None)
    elif action == "extend":
        decision = body.get("decision", "request")
        if decision not in ("request", "approve", "deny"):
            raise bad_param("decision", "decision must be request, approve or deny")
        data["decision"] = decision
        if decision == "request":
            if row.extension_request:
                raise APIError(409, "illegal_transition", "an extension request is already "
                               "pending: approve or deny it first", field="decision")
            amount, unit = _limit_param(body)
            sets["extension_request"] = json.dumps({
                "amount": amount, "unit": unit, "reason": reason, "by": who.username,
                "at": now.isoformat()})
            data.update(amount=amount, unit=unit)
        else:
            if who.role not in EXTEND_DECIDERS:
                raise APIError(403, "forbidden", f"role {who.role} may not {decision} an "
                               "extension", field="decision")
            pending = row.extension_request
            if not pending:
                raise APIError(409, "illegal_transition", "no extension request is pending",
                               field="decision")
            sets["extension_request"] = None
            if decision == "approve":
                due = calendar.add(row.due_at or now, pending["amount"], pending["unit"])
                sets.update(due_at=due, extension_count=text("extension_count + 1"))
                data["due_at"] = due.isoformat()
    elif action == "postpone":
        amount, unit = _limit_param(body)
        due = calendar.add(row.due_at or now, amount, unit)
        sets.update(due_at=due, postponed=True)
        data.update(amount=amount, unit=unit, due_at=due.isoformat())
    # park (挂账) changes the state only: nothing else to set.
    elif action == "escalate":
        allowed_from = ESCALATE_FROM.get(who.role, set())
        if row.circulation == "big":
            raise APIError(409, "illegal_transition", "already in the big (district) "
                           "circulation", field="action")
        if row.circulation not in allowed_from:
            raise APIError(403, "forbidden", f"role {who.role} may not escalate from the "
                           f"{row.circulation} circulation", field="action")
        nxt = CIRCULATIONS[CIRCULATIONS.index(row.circulation) + 1]
        sets.update(circulation=nxt, escalated_at=now)
        data.update(circulation_from=row.circulation, circulation_to=nxt)
    elif action == "evaluate":
        score = body.get("score")
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise bad_param("score", "score must be an integer 1–5")
        sets.update(evaluation=score, evaluated_at=now)
        data["score"] = score
    if rule.to_state:
        sets["status"] = to_state
    _update(conn, incident_id, row.version, sets, now)
    event = _event(conn, incident_id, now, who.username, action, row.status, to_state,
                   reason or note, data)
    return {"id": incident_id, "action": action, "from": row.status, "to": to_state,
            "event": event}


def _update(conn: Connection, incident_id: int, version: int, sets: dict,
            now: datetime) -> None:
    assigns, params = [], {"id": incident_id, "v": version, "now": now}
    for i, (col, value) in enumerate(sets.items()):
        if hasattr(value, "text"):  # a SQL expression such as rework_count + 1
            assigns.append(f"{col} = {value.text}")
        elif col == "extension_request":
            assigns.append(f"{col} = CAST(:p{i} AS jsonb)")
            params[f"p{i}"] = value
        else:
            assigns.append(f"{col} = :p{i}")
            params[f"p{i}"] = value
    assigns += ["version = version + 1", "updated_at = :now"]
    done = conn.execute(text(f"UPDATE incidents SET {', '.join(assigns)} "
                             "WHERE id = :id AND version = :v"), params).rowcount
    if done != 1:  # cannot happen under FOR UPDATE; kept as a guard
        raise APIError(409, "conflict", "the incident changed meanwhile: reload it")


def _event(conn, incident_id, at, actor, action, from_state, to_state, note, data) -> dict:
    row = conn.execute(text("""
        INSERT INTO incident_events (incident_id, at, actor, action, from_state, to_state,
                                     note, data)
        VALUES (:i, :at, :actor, :action, :f, :t, :note, CAST(:data AS jsonb))
        RETURNING id, at
    """), {"i": incident_id, "at": at, "actor": actor, "action": action, "f": from_state,
           "t": to_state, "note": note,
           "data": json.dumps(data, ensure_ascii=False, default=str)}).one()
    return {"id": row.id, "at": _iso(row.at), "actor": actor, "action": action,
            "from": from_state, "to": to_state, "note": note, "data": data}


def escalate_overdue(conn: Connection, actor: str, now: datetime | None = None,
                     repeat_after: timedelta = timedelta(hours=24)) -> list[dict]:
    """Automatic escalation (one set-based statement): every overdue incident in the micro
    circulation goes to small; one in small that has been escalated at least
    ``repeat_after`` ago and is still overdue goes to big. Each gets an event row."""
    now = now or datetime.now(timezone.utc)
    rows = conn.execute(text("""
        WITH up AS (
            UPDATE incidents i SET
                circulation = CASE i.circulation WHEN 'micro' THEN 'small' ELSE 'big' END,
                escalated_at = :now, version = version + 1, updated_at = :now
            WHERE i.status IN ('dispatched', 'handling', 'feedback') AND i.due_at < :now
              AND (i.circulation = 'micro'
                   OR (i.circulation = 'small' AND i.escalated_at <= :repeat))
            RETURNING i.id, i.status, i.circulation
        ), ev AS (
            INSERT INTO incident_events (incident_id, at, actor, action, from_state,
                                         to_state, note, data)
            SELECT id, :now, :actor, 'escalate', status, status, 'overdue: automatic',
                   jsonb_build_object('circulation_to', circulation, 'automatic', true)
            FROM up
        )
        SELECT id, circulation FROM up ORDER BY id
    """), {"now": now, "repeat": now - repeat_after, "actor": actor}).all()
    return [{"id": r.id, "circulation": r.circulation} for r in rows]

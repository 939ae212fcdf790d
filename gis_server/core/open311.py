"""Open311 GeoReport v2: our categories as services, incidents as service requests.

Field names, element names, the JSON/XML shapes and the error format follow the GeoReport v2
specification, so existing Open311 apps and client libraries work unchanged:

* ``services`` — one service per subclass of ``data/categories.toml`` (``service_code`` = the
  subclass code, ``group`` = its class, ``metadata`` = it has attributes);
* ``services/CODE`` — the service definition (``attributes`` with ``values``);
* ``requests`` — the incident, status ``open`` or ``closed`` (our workflow state explained in
  ``status_notes``), ``agency_responsible`` = the department, ``expected_datetime`` = the
  deadline. Nothing personal is published: no reporter name, e-mail or phone, no address but
  the one given for the incident.

Errors: ``[{"code": 400, "description": "..."}]`` / ``<errors><error><code>…``.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import categories as cats
from .incidents import STATUS_NOTES

OPEN = ("reported", "filed", "dispatched", "handling", "feedback")
CLOSED = ("rejected", "closed", "evaluated", "parked")
MAX_RESULTS = 1000
MAX_SPAN = timedelta(days=90)
SPEC_URL = "http://wiki.open311.org/GeoReport_v2"

# element name of the items of each list-valued field (XML)
ITEM_NAMES = {"services": "service", "service_requests": "request", "errors": "error",
              "attributes": "attribute", "values": "value", "endpoints": "endpoint",
              "formats": "format"}


def open311_status(state: str) -> str:
    return "open" if state in OPEN else "closed"


def states_for(statuses: list[str]) -> list[str]:
    out: list[str] = []
    for s in statuses:
        out += list(OPEN if s == "open" else CLOSED)
    return out


def services(table: dict[str, cats.Category] | None = None) -> list[dict]:
    table = table or cats.load()
    return [{"service_code": c.code, "service_name": c.name,
             "description": f"{c.class_name} — {c.name}. Time limit {c.limit_text()}.",
             "metadata": bool(c.attributes), "type": "realtime",
             "keywords": c.keywords, "group": c.class_name}
            for c in table.values()]


def service_definition(category: cats.Category) -> dict:
    return {"service_code": category.code,
            "attributes": [dict(a) for a in sorted(category.attributes,
                                                   key=lambda a: a["order"])]}


def discovery(base_url: str, changeset: datetime) -> dict:
    return {"changeset": w3c(changeset), "contact": "Grid management command centre",
            "key_service": "API keys: an account with role reporter (`gis-server users "
                           "create APP --role reporter`) ",
            "endpoints": [{"specification": SPEC_URL, "url": base_url,
                           "changeset": w3c(changeset), "type": "production",
                           "formats": ["text/xml", "application/json"]}]}


def w3c(value: datetime | None, tz=None) -> str | None:
    if value is None:
        return None
    if tz is not None:
        value = value.astimezone(tz)
    return value.isoformat(timespec="seconds")


REQUEST_SQL = """
SELECT i.id, i.status, i.category, i.description, d.name AS agency, i.reported_at,
       i.updated_at, i.due_at, i.address, i.media_url, ST_Y(i.geom) AS lat,
       ST_X(i.geom) AS lon, i.time_limit
FROM incidents i LEFT JOIN departments d ON d.id = i.department_id
"""


def requests(conn: Connection, *, ids: list[int] | None = None,
             service_codes: list[str] | None = None, start: datetime | None = None,
             end: datetime | None = None, statuses: list[str] | None = None,
             tz=None) -> list[dict]:
    """Service requests in the spec's field order (ids override every other filter)."""
    where, p = [], {"limit": MAX_RESULTS}
    if ids is not None:
        where.append("i.id = ANY(:ids)")
        p["ids"] = ids
    else:
        if service_codes:
            where.append("i.category = ANY(:codes)")
            p["codes"] = service_codes
        if start is not None:
            where.append("i.reported_at >= :start")
            p["start"] = start
        if end is not None:
            where.append("i.reported_at <= :end")
            p["end"] = end
        if statuses:
            where.append("i.status = ANY(:states)")
            p["states"] = states_for(statuses)
    sql = REQUEST_SQL + (" WHERE " + " AND ".join(where) if where else "") + \
        " ORDER BY i.reported_at DESC, i.id DESC LIMIT :limit"
    table = cats.load()
    out = []
    for r in conn.execute(text(sql), p):
        cat = table.get(r.category)
        out.append({
            "service_request_id": r.id,
            "status": open311_status(r.status),
            "status_notes": STATUS_NOTES.get(r.status),
            "service_name": cat.name if cat else r.category,
            "service_code": r.category,
            "description": r.description,
            "agency_responsible": r.agency,
            "service_notice": notice(cat) if cat else None,
            "requested_datetime": w3c(r.reported_at, tz),
            "updated_datetime": w3c(r.updated_at, tz),
            "expected_datetime": w3c(r.due_at, tz),
            "address": r.address,
            "address_id": None,
            "zipcode": None,
            "lat": r.lat,
            "long": r.lon,
            "media_url": r.media_url,
        })
    return out


def notice(category: cats.Category) -> str:
    return (f"Time limit {category.limit_text()} from dispatch "
            f"(处理时限 {category.time_limit}).")


def token_lookup(conn: Connection, token: str) -> dict | None:
    row = conn.execute(text("SELECT id FROM incidents WHERE open311_token = :t"),
                       {"t": token}).one_or_none()
    return None if row is None else {"service_request_id": row.id, "token": token}


# -- rendering ---------------------------------------------------------------------------
def _text_of(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fill(element: ET.Element, value) -> None:
    if isinstance(value, dict):
        for key, v in value.items():
            _fill(ET.SubElement(element, key), v)
    elif isinstance(value, list):
        item = ITEM_NAMES.get(element.tag, "item")
        for v in value:
            _fill(ET.SubElement(element, item), v)
    else:
        element.text = _text_of(value)


def to_xml(root: str, value) -> bytes:
    """``to_xml("services", [...])`` → ``<services><service>…`` (spec element names)."""
    element = ET.Element(root)
    _fill(element, value)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def to_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def errors(code: int, description: str) -> list[dict]:
    return [{"code": code, "description": description}]

"""Incidents REST API (staff, bearer tokens): intake, listing, detail, actions, indicators."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from flask import Blueprint, current_app, request

from ..access import audit, audit_personal_read, personal_data_mode, principal
from ..core import categories as cats
from ..core import incidents as core
from ..core import indicators as ind
from ..core import params, photos, workcalendar
from ..core.accounts import scope_prefix
from ..core.privacy import mask_name
from ..db import get_db, get_engine, owner_autocommit
from ..errors import APIError, bad_param
from . import geojson

bp = Blueprint("incidents", __name__)


def fallback_m() -> float:
    return float(current_app.config.get("INCIDENT_FALLBACK_M")
                 or os.environ.get("GIS_INCIDENT_FALLBACK_M", 200))


def grid_index():
    return current_app.extensions["grid_index"].get(get_engine())


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if body is None:
        raise bad_param("body", "the body must be JSON (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise bad_param("body", "the body must be a JSON object")
    return body


def _intake_body() -> tuple[dict, object]:
    """JSON, or multipart/form-data with the same fields plus a ``photo`` file."""
    if request.mimetype == "multipart/form-data":
        body = {k: v for k, v in request.form.items()}
        if "attributes" in body:
            import json
            try:
                body["attributes"] = json.loads(body["attributes"])
            except ValueError:
                raise bad_param("attributes", "attributes must be a JSON object") from None
        return body, request.files.get("photo")
    return _json_body(), None


@bp.post("/api/v1/incidents")
def create_incident():
    """Staff intake: 201 with the incident, its grid, department, assignee and deadline."""
    body, upload = _intake_body()
    loc = body.get("location") if isinstance(body.get("location"), dict) else {}
    who = principal()
    stored = None
    if upload is not None:
        stored = photos.stage(upload.stream.read(photos.max_bytes() + 1), "photo")
    try:
        # As the owner (not scoped by RLS): a worker may report just outside their own grid.
        # One statement writes incident, first event and audit row (atomic on its own, so in
        # autocommit: one round trip); the location lookups before it only read.
        with owner_autocommit() as conn:
            lon, lat, address = core.resolve_location(
                conn, loc.get("lon", body.get("lon")), loc.get("lat", body.get("lat")),
                body.get("building_id"), body.get("address"))
            category = core.category_of(body.get("category"))
            attributes = core.validate_attributes(category, body.get("attributes"))
            source = body.get("source") or "patrol"
            incident = core.intake(
                conn, grid_index(), who, category=category.code,
                description=body.get("description"), lon=lon, lat=lat, address=address,
                source=source, reporter=body.get("reporter"),
                reporter_contact=body.get("reporter_contact"), attributes=attributes,
                media_url=body.get("media_url"), photo=stored and stored.info,
                fallback_m=fallback_m(), mode=personal_data_mode(who),
                audit={"remote_addr": request.remote_addr, "endpoint": request.endpoint,
                       "detail": {"category": category.code, "source": source}})
            incident_id = incident["id"]
        if stored:
            stored.commit()
    finally:
        if stored:
            stored.discard()
    amount, unit = cats.load()[incident["category"]["code"]].limit
    cal = workcalendar.load()
    incident["deadline_if_dispatched_now"] = cal.add(
        datetime.now(timezone.utc), amount, unit).isoformat()
    incident["possible_duplicates"] = incident["flags"].get("possible_duplicates", [])
    return incident, 201, {"Location": f"/api/v1/incidents/{incident_id}",
                           "ETag": f'"{incident["version"]}"'}


def _csv(value, field, allowed=None) -> list[str] | None:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise bad_param(field, f"unknown {field} {bad[0]!r}")
    return items


def _bool(value, field) -> bool | None:
    if value in (None, ""):
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise bad_param(field, f"{field} must be true or false")


def list_params(args) -> dict:
    grid = args.get("grid")
    if grid and not (grid.isdigit() and 6 <= len(grid) <= 15):
        raise bad_param("grid", "grid must be a grid code (or its prefix, ≥ 6 digits)")
    return {
        "status": _csv(args.get("status"), "status", core.STATES),
        "category": _csv(args.get("category"), "category", cats.load()),
        "grid": scope_prefix(grid) if grid and len(grid) >= 14 else grid,
        "overdue": _bool(args.get("overdue"), "overdue"),
        "bbox": params.bbox(args.get("bbox")) if args.get("bbox") else None,
        "start": params.timestamp(args.get("from"), "from"),
        "end": params.timestamp(args.get("to"), "to"),
    }


@bp.get("/api/v1/incidents")
def list_incidents():
    """GeoJSON; filters: status, category (comma lists), grid, overdue, bbox, from, to."""
    filters = list_params(request.args)
    limit, offset = params.paging(request.args, 10000, 1000)
    return geojson(core.list_incidents(get_db(), limit=limit, offset=offset, **filters))


@bp.get("/api/v1/incidents/<int:incident_id>")
def incident_detail(incident_id: int):
    mode = personal_data_mode()
    incident = core.get_incident(get_db(), incident_id, mode, principal().role)
    if mode == "unmasked" and core.has_personal(incident):
        audit_personal_read("incident", incident_id)
    return incident, 200, {"ETag": f'"{incident["version"]}"'}


def _if_match(body: dict) -> int | None:
    header = request.headers.get("If-Match")
    value = header if header is not None else body.get("version")
    if value is None or value == "*":
        return None
    raw = str(value).strip()
    raw = raw[2:] if raw.startswith("W/") else raw
    raw = raw.strip('"')
    if not raw.isdigit():
        raise bad_param("If-Match" if header is not None else "version",
                        "If-Match must be the incident's ETag (its version), e.g. \"3\"")
    return int(raw)


@bp.post("/api/v1/incidents/<int:incident_id>/actions")
def incident_action(incident_id: int):
    """``{"action": "file|reject|dispatch|...", ...}``; 409 names the allowed actions."""
    body = _json_body()
    who = principal()
    conn = get_db()
    result = core.apply_action(conn, who, incident_id, body, workcalendar.load(),
                               if_match=_if_match(body))
    audit(f"incident_{result['action']}", "incident", incident_id,
          {"from": result["from"], "to": result["to"]})
    conn.commit()
    mode = personal_data_mode()
    incident = core.get_incident(conn, incident_id, mode, who.role)
    conn.rollback()
    return ({"result": result, "incident": incident}, 200,
            {"ETag": f'"{incident["version"]}"'})


@bp.get("/api/v1/incidents/actions")
def action_rules():
    """The action table: from which states, to which, by which roles."""
    return {"actions": core.rules_table(), "states": list(core.STATES),
            "circulations": list(core.CIRCULATIONS)}


@bp.get("/api/v1/incident-categories")
def categories():
    return {"categories": [c.to_dict() | {"limit_text": c.limit_text()}
                           for c in cats.load().values()]}


@bp.post("/api/v1/incidents/escalate-overdue")
def escalate_overdue():
    """Automatic escalation of overdue incidents (run by cron, or by hand)."""
    conn = get_db()
    who = principal()
    done = core.escalate_overdue(conn, who.username)
    audit("escalate_overdue", "incident", None, {"count": len(done)})
    conn.commit()
    return {"escalated": done, "count": len(done)}


@bp.get("/api/v1/indicators")
def indicators():
    level = request.args.get("level", "grid")
    end = params.timestamp(request.args.get("to"), "to") or datetime.now(timezone.utc)
    start = params.timestamp(request.args.get("from"), "from") or end - timedelta(days=30)
    if end <= start:
        raise bad_param("to", "to must be after from")
    try:
        weights = ind.load_weights()
    except ValueError as exc:
        raise APIError(500, "configuration_error", str(exc)) from None
    rows = ind.indicators(get_db(), level, start, end, weights)
    mode = personal_data_mode()
    if level == "worker" and mode != "unmasked":
        for r in rows:
            r["name"] = mask_name(r["name"]) if mode == "masked" else None
    return {"level": level, "from": start.isoformat(), "to": end.isoformat(),
            "weights": weights, "count": len(rows), "ranking": rows}

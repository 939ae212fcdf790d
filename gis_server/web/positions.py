"""Positions: device ingest (OsmAnd / Traccar Client), batches, workers, live GeoJSON, events,
tracks, patrol coverage.

``/track/osmand`` carries no bearer token: as in Traccar, the registered device id is the
credential (access rule ``DEVICE``: no login, no per-address rate limit). Unknown devices get
Traccar's answers (400 for the query form, 404 for JSON) and nothing is stored but a counter.
"""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from urllib.parse import parse_qs

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.http import HTTP_STATUS_CODES

from .. import access
from ..core import params
from ..core import patrol as patrol_core
from ..core import positions as core
from ..core import privacy
from ..core.accounts import scope_prefix
from ..core.osmand import (UnknownDevice, decode_flat_batch, parse_batch_item, parse_json,
                           parse_query)
from ..core.tracks import track as worker_track
from ..db import get_db, get_engine
from ..errors import APIError, bad_param
from . import geojson

bp = Blueprint("positions", __name__)

MAX_BATCH = 50_000


def rules() -> core.Rules:
    cached = current_app.extensions.get("position_rules")
    if cached is None:
        cached = current_app.extensions["position_rules"] = core.rules_from(current_app.config)
    return cached


def _grid_index():
    return current_app.extensions["grid_index"].get(get_engine())


_ingest_engines: dict = {}


def ingest_engine():
    """The device-ingest pool: sized for a threaded worker (``--threads 32``), no pre-ping
    round trip, and asynchronous commit (``synchronous_commit=off``: a crash may lose the
    last fraction of a second of phone fixes, never corrupt anything; phones report again
    within seconds). Batches use the ordinary, synchronous engine."""
    url = current_app.config["DATABASE_URL"]
    engine = _ingest_engines.get(url)
    if engine is None:
        from sqlalchemy import create_engine
        engine = _ingest_engines[url] = create_engine(
            url, pool_size=16, max_overflow=32, pool_recycle=3600,
            connect_args={"connect_timeout": 5, "options": "-c synchronous_commit=off "
                                                          "-c plan_cache_mode=force_generic_plan"})
    return engine


_batchers: dict = {}


def batcher(engine) -> core.IngestBatcher:
    url = current_app.config["DATABASE_URL"]
    found = _batchers.get(url)
    if found is None:
        cache, owner = current_app.extensions["grid_index"], get_engine()
        found = _batchers[url] = core.IngestBatcher(engine, lambda: cache.get(owner), rules())
    return found


def _sweep(engine) -> None:
    try:
        core.SWEEPER.maybe_run(engine, rules())
    except Exception:  # the fix is stored; a failed sweep is retried later
        current_app.logger.exception("status sweep failed")


def _is_json() -> bool:
    return (request.mimetype or "").startswith("application/json")


def _outcome_headers(outcome: str) -> list[tuple[str, str]]:
    # Traccar answers 200 with an empty body; a fix refused by the filtering rules is
    # answered 200 too (counted, never retried forever by the phone), with the reason.
    return [("X-Positions-Accepted", "1" if outcome == "accepted" else "0"),
            ("X-Positions-Duplicates", "1" if outcome == "duplicate" else "0"),
            ("X-Positions-Rejected",
             "0" if outcome in ("accepted", "duplicate") else f"{outcome}=1")]


@bp.route("/track/osmand", methods=["GET", "POST"])
def osmand():
    """One fix from a phone (OsmAnd / Traccar Client), query, form or JSON.

    The common case (a known device, parameters in the query string) is answered by
    :class:`OsmandFastPath` before Flask; this view serves the rest (JSON and form bodies,
    unknown devices, bad input) and the first request of each process."""
    engine = ingest_engine()
    json_form = request.method == "POST" and _is_json()
    if json_form:
        fix = parse_json(request.get_json(silent=True))
    else:
        fix = parse_query(request.args if request.args else request.form)
    devices = core.DEVICES.get(engine)
    if fix.device_id not in devices:
        with engine.begin() as conn:
            core.count_rejections(conn, core.Counter(
                {("unknown_device", None, fix.device_id[:64],
                  fix.recorded_at or datetime.now(timezone.utc)): 1}),
                core.DEVICES.timezone(engine))
        raise UnknownDevice(fix.device_id, 404 if json_form else 400)
    outcome = batcher(engine).submit(fix)
    _sweep(engine)
    response = Response("", status=200, mimetype="text/plain")
    response.headers.extend(_outcome_headers(outcome))
    return response


class OsmandFastPath:
    """WSGI middleware answering the hot case of ``/track/osmand`` without Flask.

    A phone's fix needs no session, login, rate limit or URL routing (access rule
    ``DEVICE``), yet Flask spends about 0.5 ms of CPU per request on them, more than the
    fix's share of the group-committed write. So a GET/POST whose parameters are in the
    query string, from a known device, once this process's writer exists, is parsed and
    handed to the :class:`~gis_server.core.positions.IngestBatcher` here. Anything else —
    a JSON or form body, a parse error, an unknown device, the first request — goes to the
    Flask view unchanged, which therefore answers every error exactly as before.
    """

    PATH = "/track/osmand"

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if (environ.get("PATH_INFO") != self.PATH or not environ.get("QUERY_STRING")
                or environ.get("REQUEST_METHOD") not in ("GET", "POST")
                or (environ.get("CONTENT_TYPE") or "").startswith("application/json")):
            return self.wsgi_app(environ, start_response)
        url = self.app.config["DATABASE_URL"]
        engine, writer = _ingest_engines.get(url), _batchers.get(url)
        position_rules = self.app.extensions.get("position_rules")
        if engine is None or writer is None or position_rules is None:
            return self.wsgi_app(environ, start_response)
        try:
            fix = parse_query(parse_qs(environ["QUERY_STRING"], keep_blank_values=True))
        except APIError:
            return self.wsgi_app(environ, start_response)
        if fix.device_id not in core.DEVICES.get(engine):
            return self.wsgi_app(environ, start_response)
        try:
            outcome = writer.submit(fix)
        except APIError as exc:
            return _json_answer(start_response, exc.status, exc.to_dict())
        except Exception:
            self.app.logger.exception("position ingest failed")
            return _json_answer(start_response, 500, {"error": "internal_error",
                                                      "message": "internal server error"})
        try:
            core.SWEEPER.maybe_run(engine, position_rules)
        except Exception:  # the fix is stored; a failed sweep is retried later
            self.app.logger.exception("status sweep failed")
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", "0"), *_outcome_headers(outcome)])
        return [b""]


def _json_answer(start_response, status: int, body: dict):
    data = json.dumps(body, ensure_ascii=False).encode()
    start_response(f"{status} {HTTP_STATUS_CODES.get(status, '')}".strip(),
                   [("Content-Type", "application/json"),
                    ("Content-Length", str(len(data)))])
    return [data]


@bp.record_once
def _install_fast_path(state) -> None:
    state.app.wsgi_app = OsmandFastPath(state.app, state.app.wsgi_app)


_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))  # digit → "0", else " "


def _json_body():
    """``request.get_json(silent=True)``, decoded with orjson (2x faster for a large batch).
    What orjson refuses (NaN, Infinity, other encodings, bad UTF-8...) or reads differently
    (an integer outside 64 bits becomes a float: any run of 19+ digits) goes to the standard
    parser, so every answer stays the same."""
    if not request.is_json:
        return None
    data = request.get_data(cache=True)
    if data.translate(_DIGITS).find(b"0" * 19) < 0:
        with contextlib.suppress(orjson.JSONDecodeError):  # Flask's parser decides below
            return orjson.loads(data)
    return request.get_json(silent=True)


@bp.post("/api/v1/positions")
def batch():
    """A buffer of fixes uploaded at once: ``{"positions": [...]}`` (or a bare list); each
    item in the query form's names (``id``/``device_id``, ``lat``, ``lon``, ``timestamp``...)
    or the JSON variant. Answers how many were accepted, duplicates and rejected (by reason)."""
    fixes = decode_flat_batch(request.get_data(cache=True)) if request.is_json else None
    if fixes is None:  # not the usual flat shape: element by element, naming any error
        body = _json_body()
        items = body.get("positions") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise bad_param("positions", "send {\"positions\": [...]} (a JSON list of fixes)")
        if len(items) > MAX_BATCH:
            raise bad_param("positions", f"at most {MAX_BATCH} positions per request")
        fixes = [parse_batch_item(item, i) for i, item in enumerate(items)]
    elif len(fixes) > MAX_BATCH:
        raise bad_param("positions", f"at most {MAX_BATCH} positions per request")
    who = access.principal()
    allowed = None
    if who.role == "grid_worker":
        if who.worker_id is None:
            raise APIError(403, "forbidden", "this account is not linked to a worker")
        allowed = {who.worker_id}
    engine = get_engine()
    index = _grid_index()

    def work(conn):
        summary = core.ingest(conn, engine, fixes, index, rules(), allowed_workers=allowed,
                              outcomes=False).to_dict()
        access.audit("ingest_positions", "positions", None,
                     {k: summary[k] for k in ("received", "accepted", "duplicates",
                                              "rejected_by_reason")}, conn=conn)
        return summary

    summary = core.with_retry(engine, work)  # (again on a deadlock with another writer)
    _sweep(engine)
    provider = current_app.json
    if (provider.compact is False or (provider.compact is None and current_app.debug)
            or getattr(provider, "sort_keys", True) or getattr(provider, "ensure_ascii", True)):
        return summary
    # what Flask's provider writes here (compact, unsorted keys, UTF-8: see create_app),
    # ~10x faster for a batch's thousands of events
    return Response(orjson.dumps(summary) + b"\n", mimetype=provider.mimetype)


def _scope_arg() -> str | None:
    code = params.grid_code(request.args.get("scope"), "scope")
    core.check_scope(get_db(), code)
    return code


@bp.get("/api/v1/workers")
def workers_index():
    """Workers (in the caller's scope, or under ``scope=CODE``) with role, device id and
    assigned grids; names, phones and device ids follow the caller's personal-data mode."""
    scope = _scope_arg()
    workers = core.list_workers(get_db(), rules(), scope)
    mode = access.personal_data_mode()
    if mode == "removed":
        workers = [{k: v for k, v in w.items() if k not in ("name", "phone", "device_id")}
                   for w in workers]
    elif mode == "masked":
        for w in workers:
            w["name"] = privacy.mask_name(w["name"])
            w["phone"] = privacy.mask_phone(w["phone"])
            w["device_id"] = privacy.mask_id_number(w["device_id"])
    elif workers:
        access.audit_personal_read("workers", scope or "*", {"count": len(workers)})
    return {"workers": workers, "numberReturned": len(workers),
            "offline_after_s": rules().offline_after_s}


@bp.get("/api/v1/workers/live")
def workers_live():
    """GeoJSON of latest positions: status (online/offline by staleness), current grid,
    inside an assigned grid or not. No personal field (names/phones come from /workers)."""
    scope = _scope_arg()
    body = core.live_geojson(get_db(), rules(), scope)
    return Response(body, mimetype="application/geo+json")


@bp.get("/api/v1/workers/<int:worker_id>/track")
def worker_track_view(worker_id: int):
    """The track between ``from`` and ``to`` (default: the last 24 h) as a GeoJSON Feature."""
    since, until = core.parse_range(request.args)
    radius = params.number(request.args.get("stop_radius", 30), "stop_radius", 1, 1000)
    min_stop = params.number(request.args.get("min_stop", 300), "min_stop", 10, 86400)
    return geojson(worker_track(get_db(), worker_id, since, until, radius, min_stop))


@bp.get("/api/v1/events")
def events_index():
    """Status and geofence events (grid_exit, grid_enter, offline, online, stopped)."""
    args = request.args
    kind = args.get("kind") or None
    if kind is not None and kind not in core.EVENT_KINDS:
        raise bad_param("kind", f"kind must be one of {', '.join(core.EVENT_KINDS)}")
    worker = params.integer(args.get("worker_id"), "worker_id", 1) \
        if args.get("worker_id") else None
    limit, offset = params.paging(args, 10_000, 1000)
    scope = _scope_arg()
    _sweep(get_engine())
    return core.list_events(get_db(), params.timestamp(args.get("since"), "since"),
                            params.timestamp(args.get("until"), "until"), kind, worker,
                            scope, limit, offset)


@bp.get("/api/v1/positions/rejections")
def rejections_index():
    """How many fixes the filtering rules refused, per day and reason (never silently lost)."""
    day = None
    if request.args.get("date"):
        day = params.timestamp(request.args["date"], "date").date()
    return {"rejections": core.rejection_counts(get_db(), day), "rules": rules().to_dict()}


@bp.get("/api/v1/patrol-coverage")
def patrol_coverage():
    """Per grid of ``level``, the share of its area and buildings within ``distance`` metres
    (default 30) of its workers' tracks on ``date`` (default today), and the unwalked grids."""
    args = request.args
    value = args.get("date")
    day = params.timestamp(value, "date").date() if value else datetime.now(timezone.utc).date()
    level = params.level(args.get("level"), "level") or "unit"
    distance = params.number(args.get("distance", 30), "distance", 1, 1000)
    gap = params.number(args.get("gap", 300), "gap", 30, 86400)
    scope = _scope_arg()
    return patrol_core.coverage(get_db(), day, level, distance, gap,
                                scope_prefix(scope) if scope else "",
                                current_app.config.get("METRIC_SRID"))

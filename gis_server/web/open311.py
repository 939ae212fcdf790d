"""Open311 GeoReport v2 under ``/open311/v2/`` (JSON and XML, the spec's shapes and errors).

Reads are public (rate-limited per address); ``POST requests`` needs ``api_key`` — an API
token of an account with role ``reporter`` (or staff). Access is checked centrally
(``access.APP_KEY``); errors raised there are rendered here in the spec's error format.
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from ..access import audit, principal
from ..core import categories as cats
from ..core import incidents as core
from ..core import open311, params, workcalendar
from ..db import get_db, get_engine
from ..errors import APIError, bad_param, not_found
from .incidents import fallback_m, grid_index

bp = Blueprint("open311", __name__, url_prefix="/open311/v2")
FMT = "<any(json,xml):fmt>"
MIMETYPES = {"json": "application/json", "xml": "text/xml"}
ROOTS = {"services": "services", "requests": "service_requests"}


def _fmt() -> str:
    fmt = (request.view_args or {}).get("fmt")
    if fmt in MIMETYPES:
        return fmt
    return "json" if request.path.endswith(".json") else "xml"


def render(root: str, value, status: int = 200, fmt: str | None = None) -> Response:
    fmt = fmt or _fmt()
    body = open311.to_json(value) if fmt == "json" else open311.to_xml(root, value)
    return Response(body, status=status, mimetype=MIMETYPES[fmt])


@bp.errorhandler(APIError)
def _api_error(exc: APIError):
    status = exc.status
    if exc.error == "not_covered":  # the spec knows 400 for "any other error"
        status = 400
    field = f"{exc.field}: " if exc.field and not exc.message.startswith(exc.field) else ""
    return render("errors", open311.errors(status, field + exc.message), status)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    response = render("errors", open311.errors(exc.code or 400, exc.description or exc.name),
                      exc.code or 400)
    for header in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                   "X-RateLimit-Reset"):
        if exc.get_response().headers.get(header):
            response.headers[header] = exc.get_response().headers[header]
    return response


@bp.get(f"/discovery.{FMT}")
def discovery(fmt):
    changeset = datetime.fromtimestamp(cats.categories_file().stat().st_mtime, timezone.utc)
    return render("discovery", open311.discovery(request.host_url.rstrip("/") + bp.url_prefix,
                                                 changeset))


@bp.get(f"/services.{FMT}")
def services(fmt):
    return render("services", open311.services())


@bp.get(f"/services/<service_code>.{FMT}")
def service_definition(service_code, fmt):
    table = cats.load()
    if service_code not in table:
        raise not_found("service_code", service_code)
    return render("service_definition", open311.service_definition(table[service_code]))


ATTRIBUTE = re.compile(r"^attribute\[([^\]]+)\](\[\])?$")


def _attributes(form) -> dict:
    out: dict = {}
    for key in form:
        m = ATTRIBUTE.match(key)
        if m:
            values = form.getlist(key)
            out[m.group(1)] = values if m.group(2) or len(values) > 1 else values[0]
    return out


@bp.route(f"/requests.{FMT}", methods=["GET", "POST"])
def requests(fmt):
    if request.method == "POST":
        return create_request()
    return render("service_requests", list_requests(request.args))


def _tz():
    return workcalendar.load().tz


def list_requests(args) -> list[dict]:
    ids = args.get("service_request_id")
    if ids:
        try:
            id_list = [int(x) for x in ids.split(",") if x.strip()]
        except ValueError:
            raise bad_param("service_request_id", "service_request_id must be a comma-"
                                                  "separated list of ids") from None
        return open311.requests(get_db(), ids=id_list, tz=_tz())
    codes = [c.strip() for c in args.get("service_code", "").split(",") if c.strip()]
    statuses = [s.strip() for s in args.get("status", "").split(",") if s.strip()]
    if any(s not in ("open", "closed") for s in statuses):
        raise bad_param("status", "status must be open or closed (comma-separated)")
    start = params.timestamp(args.get("start_date"), "start_date")
    end = params.timestamp(args.get("end_date"), "end_date")
    if start is None and end is None:
        end = datetime.now(timezone.utc)
        start = end - open311.MAX_SPAN
    elif start is None:
        start = end - open311.MAX_SPAN
    elif end is None:
        end = start + open311.MAX_SPAN
    if end < start:
        raise bad_param("end_date", "end_date must not be before start_date")
    if end - start > open311.MAX_SPAN:
        raise bad_param("end_date", "the date range may not span more than 90 days")
    return open311.requests(get_db(), service_codes=codes or None, start=start, end=end,
                            statuses=statuses or None, tz=_tz())


def create_request():
    form = request.values
    who = principal()
    code = form.get("service_code")
    if not code:
        raise bad_param("service_code", "service_code is required")
    category = core.category_of(code, "service_code")
    description = form.get("description")
    if description is not None and len(description) > core.MAX_DESCRIPTION:
        raise bad_param("description", f"description must be at most {core.MAX_DESCRIPTION} "
                                       f"characters, got {len(description)}")
    token = secrets.token_urlsafe(18)
    with get_engine().begin() as conn:
        lon, lat, address = core.resolve_location(
            conn, form.get("long"), form.get("lat"), form.get("address_id"),
            form.get("address_string"), fields=("long", "lat", "address_id", "address_string"))
        attributes = core.validate_attributes(category, _attributes(form), "attribute")
        name = " ".join(x for x in (form.get("first_name"), form.get("last_name")) if x)
        contact = ", ".join(x for x in (form.get("phone"), form.get("email")) if x)
        incident_id = core.create_incident(
            conn, grid_index(), who, category=category.code,
            description=description or category.name, lon=lon, lat=lat, address=address,
            source="public", reporter=name or None, reporter_contact=contact or None,
            attributes={**attributes, **{k: form[k] for k in ("device_id", "account_id")
                                         if form.get(k)}},
            media_url=form.get("media_url") or None, open311_token=token,
            fallback_m=fallback_m(),
            fields={"category": "service_code", "reporter": "first_name",
                    "reporter_contact": "phone"})
        audit("create_incident", "incident", incident_id,
              {"category": category.code, "source": "public", "via": "open311"}, conn=conn)
    body = [{"service_request_id": incident_id, "token": token,
             "service_notice": open311.notice(category),
             "account_id": form.get("account_id") or None}]
    return render("service_requests", body, 201)


@bp.get(f"/requests/<service_request_id>.{FMT}")
def request_detail(service_request_id, fmt):
    if not service_request_id.isdigit():
        raise bad_param("service_request_id", "service_request_id must be an integer")
    found = open311.requests(get_db(), ids=[int(service_request_id)], tz=_tz())
    if not found:
        raise not_found("service_request_id", service_request_id)
    return render("service_requests", found)


@bp.get(f"/tokens/<token>.{FMT}")
def token_detail(token, fmt):
    found = open311.token_lookup(get_db(), token)
    if found is None:
        raise not_found("token", token)
    return render("service_requests", [found])



"""Access control: who may call which route, and what they may see.

One table, :data:`ACCESS`, maps every Flask endpoint to the roles allowed to call it (or
:data:`PUBLIC`). A ``before_request`` hook enforces it for every request, so a new route
that is not in the table is refused (fail closed) and the route-walking test flags it.
The permission matrix in docs/PERMISSIONS.md is generated from this table.

Scope is not enforced here but in PostgreSQL: the request's connection runs as ``gis_app``
with ``gis.scope`` set to the caller's code prefix, and row-level security policies
(migration 0002) hide every row outside it. Personal data is masked per :data:`PERSONAL_DATA`,
and every unmasked read is written to the audit log (:func:`audit`).
"""
from __future__ import annotations

from flask import current_app, g, redirect, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user

from .core import accounts
from .core import audit as audit_log
from .core.accounts import ANONYMOUS, AuthError, Principal
from .errors import APIError
from .models import ROLES

PUBLIC = "public"
# Open311-style routes: GET/HEAD public (rate-limited); other methods need an ``api_key``
# parameter (an API token of any role: ``reporter`` for civic apps, or staff) or a bearer
# token. A missing key → 400, a bad one → 403 "Invalid api_key" (the blueprint renders its
# own error format).
APP_KEY = "app_key"
# Device ingest (OsmAnd / Traccar Client): no login, the registered device id is the
# credential (checked by the view); not rate-limited per address (a NAT carries many phones).
DEVICE = "device"
AUTHENTICATED = frozenset(ROLES)
STAFF = frozenset(ROLES) - {"reporter"}
ADMIN = frozenset({"admin"})
# Planning (issue 5): planners (and admins) draft and publish; the command centre and street /
# community admins read plans in their scope; analysts may also read impact (no personal data).
PLANNERS = frozenset({"planner", "admin"})
PLAN_READERS = PLANNERS | {"command_center", "street_admin", "community_admin"}
IMPACT_READERS = PLAN_READERS | {"analyst"}

# endpoint → roles (or PUBLIC). Every route of the app must be listed.
ACCESS: dict[str, frozenset[str] | str] = {
    "static": PUBLIC,
    "health.healthz": PUBLIC,
    "health.hello": PUBLIC,
    "locate.locate": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": AUTHENTICATED,
    "auth.me": AUTHENTICATED,
    "auth.audit_index": ADMIN,
    "grids.grids_index": STAFF,
    "grids.grid_detail": STAFF,
    "buildings.buildings_index": STAFF,
    "buildings.building_detail": STAFF,
    "households.households_index": STAFF,
    "households.household_detail": STAFF,
    "maps.grids_map": STAFF,
    # Planning: validate, drafts, impact, publish, import/export (issue 5)
    "plans.validate_layer": IMPACT_READERS,
    "plans.repair_layer": IMPACT_READERS,
    "plans.validate_hierarchy": IMPACT_READERS,
    "plans.export_layer": IMPACT_READERS,
    "plans.assignments_csv": IMPACT_READERS,
    "plans.plans_index": IMPACT_READERS,
    "plans.plan_detail": IMPACT_READERS,
    "plans.plan_grids": IMPACT_READERS,
    "plans.plan_edits": PLAN_READERS,
    "plans.plan_validate": IMPACT_READERS,
    "plans.plan_impact": IMPACT_READERS,
    "plans.plans_create": PLANNERS,
    "plans.plan_grid_replace": PLANNERS,
    "plans.plan_grid_add": PLANNERS,
    "plans.plan_grid_remove": PLANNERS,
    "plans.plan_move_buildings": PLANNERS,
    "plans.plan_import": PLANNERS,
    "plans.plan_undo": PLANNERS,
    "plans.plan_repair": PLANNERS,
    "plans.plan_publish": PLANNERS,
    "plans.plan_discard": PLANNERS,
    "maps.plan_maps.plan_map_page": PLAN_READERS,
    # Live positions (issue 7)
    "positions.osmand": DEVICE,
    "positions.batch": frozenset({"admin", "command_center", "grid_worker"}),
    "positions.workers_index": STAFF,
    "positions.workers_live": STAFF,
    "positions.worker_track_view": STAFF,
    "positions.events_index": STAFF,
    "positions.rejections_index": frozenset({"admin", "command_center"}),
    "positions.patrol_coverage": STAFF,
    "stream.stream": STAFF,
    "maps_live.command_center": STAFF,
    # OGC API – Features, vector tiles and the vector-tile map (issue 8)
    "ogc.landing": STAFF,
    "ogc.api": STAFF,
    "ogc.conformance": STAFF,
    "ogc.collections": STAFF,
    "ogc.collection": STAFF,
    "ogc.items": STAFF,
    "ogc.item": STAFF,
    "tiles.tile": STAFF,
    "maps.tiles_map": STAFF,
    # Incidents (issue 6); what each role may do to an incident: core/incidents.py RULES
    "incidents.create_incident": frozenset({"grid_worker", "community_admin", "street_admin",
                                            "command_center", "admin"}),
    "incidents.list_incidents": STAFF,
    "incidents.incident_detail": STAFF,
    "incidents.incident_action": frozenset({"grid_worker", "community_admin", "street_admin",
                                            "command_center", "admin"}),
    "incidents.action_rules": STAFF,
    "incidents.categories": AUTHENTICATED,
    "incidents.escalate_overdue": frozenset({"command_center", "admin"}),
    "incidents.indicators": frozenset({"command_center", "street_admin", "community_admin",
                                       "admin", "analyst"}),
    "maps.incidents.incidents_map_page": STAFF,
    "open311.discovery": APP_KEY,
    "open311.services": APP_KEY,
    "open311.service_definition": APP_KEY,
    "open311.requests": APP_KEY,
    "open311.request_detail": APP_KEY,
    "open311.token_detail": APP_KEY,
}

# What each role sees of personal data (names, ID numbers, phones, exact addresses):
# "unmasked" (audited), "masked" (e.g. 110***********1234) or "removed" (no personal field).
PERSONAL_DATA = {
    "command_center": "unmasked",
    "street_admin": "unmasked",
    "community_admin": "unmasked",
    "grid_worker": "unmasked",
    "admin": "masked",
    "planner": "masked",
    "analyst": "removed",
    "reporter": "removed",
}

# Routes answering HTML: an anonymous caller is sent to the login form instead of a 401.
HTML_PREFIXES = ("maps.", "maps_live.")

def _public_limit() -> str:
    return current_app.config["PUBLIC_RATE_LIMIT"]


def _not_rate_limited() -> bool:
    """Only PUBLIC routes (what a resident's app calls) are rate-limited per address."""
    return ACCESS.get(request.endpoint) not in (PUBLIC, APP_KEY) or request.endpoint == "static"


# In-process counters: with several gunicorn workers each keeps its own (documented); point
# storage_uri at redis/memcached for a shared budget.
limiter = Limiter(get_remote_address, storage_uri="memory://", headers_enabled=True,
                  default_limits=[_public_limit], default_limits_exempt_when=_not_rate_limited)
# The same test as a request filter: a request it exempts skips Flask-Limiter's per-request
# resolution of limits altogether (about 0.5 ms of CPU per staff request). Only PUBLIC and
# APP_KEY routes carry limits (default or decorated), so nothing else changes.
limiter.request_filter(_not_rate_limited)
login_manager = LoginManager()


def principal() -> Principal:
    return g.get("principal", ANONYMOUS)


def personal_data_mode(who: Principal | None = None) -> str:
    who = who or principal()
    return PERSONAL_DATA.get(who.role, "removed")


def audit(action: str, object_type: str | None, object_id, detail: dict | None = None,
          conn=None) -> None:
    """Append to the audit log in the request's transaction (commits with it)."""
    from .db import get_db
    audit_log.record(conn or get_db(), principal(), action, object_type, object_id,
                     remote_addr=request.remote_addr, endpoint=request.endpoint,
                     detail=detail)


def audit_personal_read(object_type: str, object_id, detail: dict | None = None) -> None:
    """Record an unmasked read of personal data (callers check the mode) and commit it."""
    from .db import get_db
    audit("read_personal", object_type, object_id, detail)
    get_db().commit()


def _bearer_principal() -> Principal | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed", "Authorization must be 'Bearer <token>'")
    from .db import owner_autocommit
    # On the request's own connection (one pool checkout per request), as the owner (like
    # the api_key check and the login form) in autocommit: the check is one statement, so one
    # round trip; the view's transactions then carry the authenticated caller's scope.
    with owner_autocommit() as conn:
        return accounts.authenticate_token(conn, token.strip(),
                                           current_app.config["TOKEN_PEPPER"])


def _session_principal() -> Principal | None:
    user = current_user
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.principal


def authorize() -> None:
    """before_request: authenticate, then check the route's rule in :data:`ACCESS`."""
    endpoint = request.endpoint
    if endpoint is None:  # no such route: let the 404/405 handlers answer
        return None
    rule = ACCESS.get(endpoint)
    who = _bearer_principal()
    if who is None and request.method in ("GET", "HEAD", "OPTIONS"):
        who = _session_principal()
    elif who is None and endpoint.startswith(HTML_PREFIXES + ("auth.",)):
        who = _session_principal()  # forms carry their own CSRF token
    g.principal = who or ANONYMOUS
    if rule is None:
        raise APIError(403, "forbidden", f"route {endpoint} has no access rule")
    if rule in (PUBLIC, DEVICE):
        return None
    if rule == APP_KEY:
        return _app_key(who)
    if who is None:
        if endpoint.startswith(HTML_PREFIXES):
            return redirect(url_for("auth.login", next=request.full_path))
        raise AuthError("missing", "authentication required: send 'Authorization: Bearer "
                                   "<token>' or log in")
    if who.role not in rule:
        raise APIError(403, "forbidden", f"role {who.role} may not call {endpoint}")
    return None


def _app_key(who: Principal | None) -> None:
    """APP_KEY rule: reads are public; writes need ``api_key`` (or a bearer token)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    if who is None:
        key = request.values.get("api_key", "").strip()
        if not key:
            raise APIError(400, "invalid_parameter", "api_key is required", field="api_key")
        from .db import get_engine
        try:
            with get_engine().begin() as conn:
                who = accounts.authenticate_token(conn, key,
                                                  current_app.config["TOKEN_PEPPER"])
        except AuthError:
            raise APIError(403, "invalid_api_key", "Invalid api_key received -- can't "
                           "proceed with create_request.", field="api_key") from None
        g.principal = who
    if who.role not in AUTHENTICATED:
        raise APIError(403, "forbidden", f"role {who.role} may not call {request.endpoint}")
    return None


class SessionUser:
    """Flask-Login's view of a principal."""

    def __init__(self, who: Principal):
        self.principal = who
        self.is_authenticated = True
        self.is_active = True
        self.is_anonymous = False

    def get_id(self) -> str:
        return str(self.principal.user_id)


def init_app(app) -> None:
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"

    @login_manager.user_loader
    def _load(user_id: str):
        from .db import get_engine
        if not user_id.isdigit():
            return None
        with get_engine().connect() as conn:
            who = accounts.load_user(conn, int(user_id))
        return SessionUser(who) if who else None

    app.before_request(authorize)

    @app.after_request
    def _www_authenticate(response):
        if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
            response.headers["WWW-Authenticate"] = 'Bearer realm="gis-server"'
        return response


def permission_matrix() -> str:
    """Markdown table of :data:`ACCESS` × roles (docs/PERMISSIONS.md is this, verbatim)."""
    roles = list(ROLES)
    lines = [
        "# Permission matrix",
        "",
        "Generated from `gis_server.access.ACCESS` and `PERSONAL_DATA` by "
        "`gis-server docs permissions`; a test keeps this file identical to the code.",
        "",
        "✓ allowed · – refused (403; 401 when anonymous) · public: anyone, rate-limited · "
        "device: no login, the registered device id is the credential (not rate-limited) · "
        "api_key: reads public (rate-limited), writes need an `api_key` (any role's token).",
        "Rows are further limited to the caller's scope (its subtree of the grid hierarchy) "
        "by row-level security; objects outside it answer 404.",
        "",
        "| endpoint | " + " | ".join(roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for endpoint in sorted(ACCESS):
        rule = ACCESS[endpoint]
        cells = ["public" if rule == PUBLIC else "device" if rule == DEVICE
                 else "api_key" if rule == APP_KEY
                 else ("✓" if r in rule else "–") for r in roles]
        lines.append(f"| `{endpoint}` | " + " | ".join(cells) + " |")
    lines += ["", "## Personal data (names, ID numbers, phones, exact addresses)", "",
              "| role | sees |", "|---|---|"]
    lines += [f"| {r} | {PERSONAL_DATA[r]}{' (every read audited)' if PERSONAL_DATA[r] == 'unmasked' else ''} |"
              for r in roles]
    return "\n".join(lines) + "\n"

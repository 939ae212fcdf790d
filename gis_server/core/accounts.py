"""Accounts, scopes and bearer tokens (framework-free; the CLI and the web layer share it).

Tokens are 256-bit random strings shown once; the database keeps only
HMAC-SHA256(pepper, token), so a leaked table does not leak tokens, and lookups stay indexed.
The pepper comes from configuration (``TOKEN_PEPPER``; generated into ``data/`` for the demo).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection
from werkzeug.security import check_password_hash, generate_password_hash

from ..errors import APIError, bad_param
from ..models import ROLES

TOKEN_PREFIX = "gis_"

# Which level a role's scope must be at (None: any level, or the whole city).
SCOPE_LEVELS = {
    "admin": None, "command_center": None, "planner": None, "analyst": None, "reporter": None,
    "street_admin": {"street"}, "community_admin": {"community"},
    "grid_worker": {"unit", "community"},
}


def scope_prefix(code: str | None) -> str:
    """The code prefix shared by a grid and all its descendants ('' = the whole city).

    Codes are county(6) + street(3) + community(3) + unit(2); a level's code is padded
    with zeros, and unit sequences start at 01, so the padding tells the level.
    """
    if not code:
        return ""
    if code[6:].strip("0") == "":
        return code[:6]
    if code[9:].strip("0") == "":
        return code[:9]
    if code[12:].strip("0") == "":
        return code[:12]
    return code


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the access rules and the row-level security policies use."""
    user_id: int | None
    username: str
    role: str | None  # None: anonymous
    scope_code: str | None = None
    worker_id: int | None = None
    token_id: int | None = None

    @property
    def scope(self) -> str:
        return scope_prefix(self.scope_code)

    @property
    def is_authenticated(self) -> bool:
        return self.role is not None

    def to_dict(self) -> dict:
        return {"id": self.user_id, "username": self.username, "role": self.role,
                "scope": self.scope_code, "worker_id": self.worker_id}


ANONYMOUS = Principal(user_id=None, username="anonymous", role=None)


class AuthError(APIError):
    """401 with the reason (missing, malformed, unknown, expired, revoked)."""

    def __init__(self, reason: str, message: str):
        super().__init__(401, "unauthorized", message, reason=reason)
        self.reason = reason


def hash_token(token: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()


def _principal(row) -> Principal:
    m = row._mapping
    return Principal(user_id=m["id"], username=m["username"], role=m["role"],
                     scope_code=m["scope_code"], worker_id=m["worker_id"],
                     token_id=m.get("token_id"))


def validate_scope(conn: Connection, role: str, scope_code: str | None) -> None:
    if role not in ROLES:
        raise bad_param("role", f"role must be one of {', '.join(ROLES)}, got {role!r}")
    levels = SCOPE_LEVELS[role]
    if scope_code is None:
        if levels is not None:
            raise bad_param("scope", f"role {role} needs a scope at level "
                                     f"{' or '.join(sorted(levels))}")
        return
    level = conn.execute(text(
        "SELECT level FROM grids WHERE code = :c AND valid_to IS NULL"),
        {"c": scope_code}).scalar()
    if level is None:
        raise bad_param("scope", f"no current grid has code {scope_code!r}")
    if levels is not None and level not in levels:
        raise bad_param("scope", f"role {role} needs a scope at level "
                                 f"{' or '.join(sorted(levels))}, {scope_code} is a {level}")


def create_user(conn: Connection, username: str, role: str, scope_code: str | None = None,
                password: str | None = None, display_name: str | None = None,
                worker_id: int | None = None) -> dict:
    if not username or len(username) > 64:
        raise bad_param("username", "username must be 1–64 characters")
    validate_scope(conn, role, scope_code)
    if password is not None and len(password) < 10:
        raise bad_param("password", "password must have at least 10 characters")
    exists = conn.execute(text("SELECT 1 FROM users WHERE username = :u"),
                          {"u": username}).scalar()
    if exists:
        raise APIError(409, "conflict", f"user {username!r} already exists", field="username")
    row = conn.execute(text("""
        INSERT INTO users (username, display_name, role, scope_code, password_hash, worker_id)
        VALUES (:u, :d, :r, :s, :p, :w)
        RETURNING id, username, display_name, role, scope_code, worker_id, is_active, created_at
    """), {"u": username, "d": display_name, "r": role, "s": scope_code,
           "p": generate_password_hash(password) if password else None,
           "w": worker_id}).one()
    return dict(row._mapping)


def issue_token(conn: Connection, user_id: int, pepper: str,
                expires_in: timedelta | None = None, label: str | None = None) -> tuple[str, dict]:
    """Create a token; return (the token — shown once —, its stored row)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(timezone.utc) + expires_in if expires_in else None
    row = conn.execute(text("""
        INSERT INTO api_tokens (user_id, token_hash, prefix, label, expires_at)
        VALUES (:u, :h, :p, :l, :e)
        RETURNING id, user_id, prefix, label, created_at, expires_at
    """), {"u": user_id, "h": hash_token(token, pepper), "p": token[:12], "l": label,
           "e": expires_at}).one()
    return token, dict(row._mapping)


def revoke_token(conn: Connection, token_id: int) -> dict:
    row = conn.execute(text("""
        UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = :id
        RETURNING id, user_id, prefix, revoked_at
    """), {"id": token_id}).one_or_none()
    if row is None:
        raise APIError(404, "not_found", f"token {token_id} not found")
    return dict(row._mapping)


def authenticate_token(conn: Connection, token: str, pepper: str) -> Principal:
    """The principal of a bearer token, or :class:`AuthError` saying why not."""
    if not token.startswith(TOKEN_PREFIX) or len(token) < 20:
        raise AuthError("malformed", "the bearer token is malformed")
    # last_used_at is refreshed at most once a minute: most requests only read, so their
    # commit writes no WAL.
    row = conn.execute(text("""
        WITH hit AS (
            SELECT u.id, u.username, u.role, u.scope_code, u.worker_id, u.is_active,
                   t.id AS token_id, t.expires_at, t.revoked_at, t.last_used_at
            FROM api_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = :h
        ), touch AS (
            UPDATE api_tokens SET last_used_at = now()
            WHERE id = (SELECT token_id FROM hit)
              AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')
        )
        SELECT * FROM hit
    """), {"h": hash_token(token, pepper)}).one_or_none()
    if row is None:
        raise AuthError("unknown", "the bearer token is not valid")
    if row.revoked_at is not None:
        raise AuthError("revoked", "the bearer token has been revoked")
    if row.expires_at is not None and row.expires_at <= datetime.now(timezone.utc):
        raise AuthError("expired", "the bearer token has expired")
    if not row.is_active:
        raise AuthError("inactive", "the account is disabled")
    return _principal(row)


def check_password(conn: Connection, username: str, password: str) -> Principal | None:
    row = conn.execute(text("""
        SELECT id, username, role, scope_code, worker_id, password_hash FROM users
        WHERE username = :u AND is_active
    """), {"u": username}).one_or_none()
    # Hash anyway when the user is unknown so timing does not reveal which usernames exist.
    stored = row.password_hash if row is not None and row.password_hash else \
        _DUMMY_HASH
    ok = check_password_hash(stored, password or "")
    return _principal(row) if ok and row is not None and row.password_hash else None


_DUMMY_HASH = generate_password_hash("not-a-real-password")


def load_user(conn: Connection, user_id: int) -> Principal | None:
    row = conn.execute(text("""
        SELECT id, username, role, scope_code, worker_id FROM users
        WHERE id = :id AND is_active
    """), {"id": user_id}).one_or_none()
    return _principal(row) if row is not None else None


def list_users(conn: Connection) -> list[dict]:
    return [dict(r._mapping) for r in conn.execute(text("""
        SELECT u.id, u.username, u.display_name, u.role, u.scope_code, u.is_active,
               u.created_at,
               count(t.id) FILTER (WHERE t.revoked_at IS NULL
                                   AND (t.expires_at IS NULL OR t.expires_at > now()))
                   AS active_tokens
        FROM users u LEFT JOIN api_tokens t ON t.user_id = u.id
        GROUP BY u.id ORDER BY u.id
    """))]


def list_tokens(conn: Connection, user_id: int | None = None) -> list[dict]:
    return [dict(r._mapping) for r in conn.execute(text("""
        SELECT t.id, u.username, t.prefix, t.label, t.created_at, t.expires_at, t.revoked_at,
               t.last_used_at
        FROM api_tokens t JOIN users u ON u.id = t.user_id
        WHERE CAST(:u AS integer) IS NULL OR t.user_id = :u ORDER BY t.id
    """), {"u": user_id})]

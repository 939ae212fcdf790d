"""The append-only audit log: every read of unmasked personal data and every write."""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .accounts import Principal


def record(conn: Connection, principal: Principal, action: str, object_type: str | None,
           object_id, remote_addr: str | None = None, endpoint: str | None = None,
           detail: dict | None = None) -> None:
    conn.execute(text("""
        INSERT INTO audit_log (user_id, username, role, action, object_type, object_id,
                               remote_addr, endpoint, detail)
        VALUES (:uid, :uname, :role, :action, :otype, :oid, :addr, :endpoint,
                CAST(:detail AS jsonb))
    """), {"uid": principal.user_id, "uname": principal.username, "role": principal.role,
           "action": action, "otype": object_type,
           "oid": None if object_id is None else str(object_id), "addr": remote_addr,
           "endpoint": endpoint, "detail": json.dumps(detail or {}, ensure_ascii=False)})


def tail(conn: Connection, limit: int = 50, username: str | None = None,
         action: str | None = None, since: datetime | None = None) -> list[dict]:
    """Newest entries first."""
    return [dict(r._mapping) for r in conn.execute(text("""
        SELECT id, at, user_id, username, role, action, object_type, object_id, remote_addr,
               endpoint, detail
        FROM audit_log
        WHERE (CAST(:u AS text) IS NULL OR username = :u)
          AND (CAST(:a AS text) IS NULL OR action = :a)
          AND (CAST(:s AS timestamptz) IS NULL OR at >= :s)
        ORDER BY id DESC LIMIT :n
    """), {"u": username, "a": action, "s": since, "n": limit})]

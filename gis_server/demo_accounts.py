"""Demo accounts, one per role, created by ``make demo`` (passwords and tokens generated).

The credentials are written to ``data/demo-accounts.txt`` (git-ignored, mode 600) the first
time and printed on every start, so a person trying the demo can log in as each role.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import text

from .core import accounts
from .db import engine_for
from .pgcluster import data_root

CREDENTIALS = data_root() / "demo-accounts.txt"


def _scopes(conn) -> dict[str, str | None]:
    def first(level):
        return conn.execute(text(
            "SELECT code FROM grids WHERE level = :l AND valid_to IS NULL ORDER BY code LIMIT 1"),
            {"l": level}).scalar()
    return {"admin": None, "command_center": None, "planner": None, "analyst": None,
            "reporter": None, "street_admin": first("street"),
            "community_admin": first("community"), "grid_worker": first("unit")}


def ensure_demo_accounts(url: str, pepper: str, credentials: Path = CREDENTIALS) -> str:
    """Create missing demo accounts; return the text telling how to log in."""
    lines = []
    with engine_for(url).begin() as conn:
        scopes = _scopes(conn)
        existing = set(conn.execute(text("SELECT username FROM users")).scalars())
        # After another city was loaded (--replace) the old scope codes are gone: re-scope.
        for role, scope in scopes.items():
            conn.execute(text("""
                UPDATE users SET scope_code = :s WHERE username = :u AND scope_code IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM grids g WHERE g.code = users.scope_code
                                  AND g.valid_to IS NULL)"""),
                {"s": scope, "u": f"demo_{role}"})
        for role, scope in scopes.items():
            username = f"demo_{role}"
            if username in existing:
                continue
            password = secrets.token_urlsafe(9)
            worker_id = None
            if role == "grid_worker":
                worker_id = conn.execute(text(
                    "SELECT worker_id FROM worker_grids WHERE grid_code = :c "
                    "AND is_responsible LIMIT 1"), {"c": scope}).scalar()
            user = accounts.create_user(conn, username, role, scope, password,
                                        display_name=f"Demo {role}", worker_id=worker_id)
            token, _ = accounts.issue_token(conn, user["id"], pepper, label="demo")
            lines.append(f"{role:<16} user {username:<22} password {password:<14} "
                         f"scope {scope or 'whole city':<15} token {token}")
    if lines:
        credentials.parent.mkdir(parents=True, exist_ok=True)
        with open(credentials, "a") as f:
            f.write("\n".join(lines) + "\n")
        credentials.chmod(0o600)
    text_out = credentials.read_text() if credentials.exists() else ""
    return ("Demo accounts (log in at http://127.0.0.1:8000/login, or send "
            "'Authorization: Bearer <token>'); kept in data/demo-accounts.txt:\n" + text_out)

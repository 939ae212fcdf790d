"""`make demo` accounts: one per role, idempotent, usable, re-scoped after a city change."""
from __future__ import annotations

import os
import re

from helpers import authed_client, dispose_database, fresh_database
from sqlalchemy import text

from gis_server import create_app
from gis_server.db import engine_for
from gis_server.demo_accounts import ensure_demo_accounts
from gis_server.models import ROLES


def test_demo_accounts(small_city, tmp_path):
    name = f"gis_test_demo_{os.getpid()}"
    url = fresh_database(name, small_city)
    try:
        app = create_app({"TESTING": True, "DATABASE_URL": url})
        creds = tmp_path / "demo-accounts.txt"
        out = ensure_demo_accounts(url, app.config["TOKEN_PEPPER"], creds)
        rows = re.findall(r"^(\w+)\s+user (\S+)\s+password (\S+)\s+scope (.+?)\s+token (\S+)$",
                          creds.read_text(), re.M)
        assert sorted(r[0] for r in rows) == sorted(ROLES)
        assert oct(creds.stat().st_mode & 0o777) == "0o600"
        for role, _user, _pw, _scope, token in rows:
            assert authed_client(app, token).get("/api/v1/me").json["role"] == role
        assert "log in at" in out
        again = ensure_demo_accounts(url, app.config["TOKEN_PEPPER"], creds)
        assert len(re.findall(r"token gis_", again)) == len(ROLES)  # nothing new
        with engine_for(url).begin() as conn:  # a scope that no longer exists is re-assigned
            conn.execute(text("UPDATE users SET scope_code = '11010899999900' "
                              "WHERE username = 'demo_community_admin'"))
        ensure_demo_accounts(url, app.config["TOKEN_PEPPER"], creds)
        with engine_for(url).connect() as conn:
            scope = conn.execute(text("SELECT scope_code FROM users "
                                      "WHERE username = 'demo_community_admin'")).scalar_one()
        assert scope == small_city.grids.query("level == 'community'").code.min()
    finally:
        dispose_database(url, name)

"""Login/logout for browser pages (session cookie, CSRF-protected forms), who-am-I, audit."""
from __future__ import annotations

from urllib.parse import urlparse

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_login import login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from ..access import SessionUser, audit, limiter, principal
from ..core import accounts, params
from ..core.accounts import ANONYMOUS
from ..core import audit as audit_log
from ..db import get_db, get_engine

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class LogoutForm(FlaskForm):
    """No fields: the form exists for its CSRF token."""


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") \
            and not urlparse(target).netloc:
        return target
    return url_for("maps.grids_map")


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login():
    form = LoginForm()
    next_url = request.args.get("next")
    error = None
    if request.method == "POST":
        if form.validate_on_submit():
            with get_engine().begin() as conn:
                who = accounts.check_password(conn, form.username.data, form.password.data)
                audit_log.record(conn, who or ANONYMOUS, "login" if who else "login_failed",
                                 "user", who.user_id if who else None,
                                 remote_addr=request.remote_addr, endpoint=request.endpoint,
                                 detail={"username": form.username.data[:64]})
            if who is not None:
                login_user(SessionUser(who))
                return redirect(_safe_next(next_url))
            error = "Unknown username or wrong password."
        else:
            error = "; ".join(f"{name}: {', '.join(msgs)}" for name, msgs in form.errors.items())
        return render_template("login.html", form=form, error=error, next=next_url), 400 \
            if "csrf_token" in form.errors else 401
    return render_template("login.html", form=form, error=error, next=next_url)


@bp.post("/logout")
def logout():
    form = LogoutForm()
    if not form.validate_on_submit():
        return {"error": "csrf", "field": "csrf_token",
                "message": "the logout form's CSRF token is missing or invalid"}, 400
    logout_user()
    return redirect(url_for("auth.login"))


@bp.get("/api/v1/me")
def me():
    return principal().to_dict()


@bp.get("/api/v1/audit")
def audit_index():
    """The audit log, newest first (admin only)."""
    limit = params.integer(request.args.get("limit"), "limit", 1, 1000, default=50)
    since = params.timestamp(request.args.get("since"), "since")
    entries = audit_log.tail(get_db(), limit=limit, username=request.args.get("user") or None,
                             action=request.args.get("action") or None, since=since)
    return {"entries": entries}


__all__ = ["bp", "audit"]

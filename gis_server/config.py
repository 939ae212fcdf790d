"""Settings, read from the environment (12-factor) with safe defaults for the demo.

Secrets never live in the repository: when ``SECRET_KEY`` is not set, a random one is
generated once into ``data/app.secret`` (git-ignored) so that sessions survive restarts.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .pgcluster import data_root


def _secret(name: str) -> str:
    value = os.environ.get(name)
    if value:
        return value
    path = data_root() / f"{name.lower()}.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def load() -> dict:
    """The Flask config mapping for ``create_app``."""
    return {
        "SECRET_KEY": _secret("SECRET_KEY"),
        # HMAC key for stored API tokens (a leaked table alone does not reveal tokens).
        "TOKEN_PEPPER": _secret("TOKEN_PEPPER"),
        # Public routes (locate, Open311 status, login form): per client address.
        "PUBLIC_RATE_LIMIT": os.environ.get("GIS_PUBLIC_RATE_LIMIT", "600/minute"),
        "LOGIN_RATE_LIMIT": os.environ.get("GIS_LOGIN_RATE_LIMIT", "10/minute"),
        "SESSION_COOKIE_SECURE": os.environ.get("GIS_INSECURE_COOKIES", "") != "1",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": True,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "DATABASE_URL": os.environ.get("DATABASE_URL"),
        # Basemap tiles: none by default (intranet-safe); e.g. a city's own tile server:
        # GIS_BASEMAP_URL="http://tiles.intranet/{z}/{x}/{y}.png"
        "BASEMAP_URL": os.environ.get("GIS_BASEMAP_URL") or None,
        "BASEMAP_ATTRIBUTION": os.environ.get("GIS_BASEMAP_ATTRIBUTION", ""),
        # Projected CRS for measurements; default: the one stored with the loaded city.
        "METRIC_SRID": int(os.environ["GIS_METRIC_SRID"]) if os.environ.get(
            "GIS_METRIC_SRID") else None,
        # How often (seconds) a worker process checks whether grids changed.
        "LOCATE_CACHE_TTL": _float("GIS_LOCATE_CACHE_TTL", 1.0),
        "JSON_SORT_KEYS": False,
        "MAX_CONTENT_LENGTH": int(os.environ.get("GIS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)),
        "VENDOR_DIR": str(Path(__file__).parent / "static" / "vendor"),
    }

"""gis-server: spatial analysis server for community grid management (网格化管理)."""
from __future__ import annotations

from flask import Flask

__version__ = "0.1.0"


def create_app(test_config: dict | None = None) -> Flask:
    """Application factory (as in Flask's tutorial): config, database, blueprints."""
    from . import access, config, db, errors
    from .core.locate import GridIndexCache
    from .pgcluster import database_url
    from .web import register_blueprints

    app = Flask(__name__)
    app.config.update(config.load())
    if test_config:
        app.config.update(test_config)
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = database_url()
    app.json.ensure_ascii = False  # Chinese names stay readable in responses
    app.json.sort_keys = False
    db.init_app(app)
    errors.register(app)
    access.init_app(app)
    app.extensions["grid_index"] = GridIndexCache(ttl=app.config["LOCATE_CACHE_TTL"])
    register_blueprints(app)
    return app

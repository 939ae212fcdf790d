"""Thin Flask views: parse the request, call ``gis_server.core``, shape the response."""
from __future__ import annotations

import json

from flask import Flask, Response


def geojson(obj: dict, status: int = 200) -> Response:
    """An RFC 7946 response (``application/geo+json``)."""
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")), status=status,
                    mimetype="application/geo+json")


def register_blueprints(app: Flask) -> None:
    from . import auth, buildings, grids, health, households, locate, maps
    from . import ogc, tiles

    from . import maps_live, positions, stream
    from . import maps_plans, plans  # noqa: F401 (maps_plans nests in maps)
    from . import incidents, maps_incidents, open311  # noqa: F401 (maps_incidents nests in maps)

    for module in (health, auth, locate, grids, buildings, households, maps, maps_live,
                   positions, stream, ogc, tiles, plans, incidents, open311):
        app.register_blueprint(module.bp)

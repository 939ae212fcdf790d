"""OGC API – Features under ``/ogc/`` (staff, bearer token; scope by row-level security)."""
from __future__ import annotations

import json
from urllib.parse import urlencode

from flask import Blueprint, Response, request, url_for

from ..access import audit_personal_read, personal_data_mode
from ..core import ogc
from ..db import get_db

bp = Blueprint("ogc", __name__)


def _base() -> str:
    return url_for("ogc.landing", _external=True).rstrip("/")


def _json(doc: dict | str, mimetype: str = ogc.JSON, headers: dict | None = None) -> Response:
    body = doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False,
                                                       separators=(",", ":"))
    response = Response(body, mimetype=mimetype)
    response.headers.update(headers or {})
    return response


def _content_crs(crs: str) -> dict:
    return {"Content-Crs": f"<{crs}>"}


@bp.get("/ogc/")
def landing():
    ogc.check_params(request.args, ogc.COMMON_PARAMS)
    return _json(ogc.landing_page(_base()))


@bp.get("/ogc/api")
def api():
    ogc.check_params(request.args, ogc.COMMON_PARAMS)
    return _json(ogc.openapi(_base()), mimetype=ogc.OPENAPI)


@bp.get("/ogc/conformance")
def conformance():
    ogc.check_params(request.args, ogc.COMMON_PARAMS)
    return _json(ogc.conformance())


@bp.get("/ogc/collections")
def collections():
    ogc.check_params(request.args, ogc.COMMON_PARAMS)
    return _json(ogc.collections_doc(_base(), ogc.city_extent(get_db())))


@bp.get("/ogc/collections/<collection_id>")
def collection(collection_id: str):
    coll = ogc.get_collection(collection_id)
    ogc.check_params(request.args, ogc.COMMON_PARAMS)
    return _json(ogc.collection_doc(coll, _base(), ogc.city_extent(get_db())))


def _link(href: str, rel: str, title: str, mimetype: str = ogc.GEOJSON) -> dict:
    return {"href": href, "rel": rel, "type": mimetype, "title": title}


@bp.get("/ogc/collections/<collection_id>/items")
def items(collection_id: str):
    coll = ogc.get_collection(collection_id)
    query = ogc.parse_items_query(coll, request.args)
    mode = personal_data_mode()
    page = ogc.items(get_db(), coll, query, mode)
    href = f"{_base()}/collections/{coll.id}/items"
    args = [(k, v) for k, v in request.args.items(multi=True)]
    page_type = ogc.FLATGEOBUF if query.fgb else ogc.GEOJSON
    links = [_link(f"{href}?{urlencode(args)}" if args else href, "self", "This page",
                   page_type),
             _link(f"{_base()}/collections/{coll.id}", "collection", coll.title, ogc.JSON)]
    if page["next_cursor"]:
        next_args = [(k, v) for k, v in args if k not in ("cursor", "offset")]
        next_args.append(("cursor", page["next_cursor"]))
        links.append(_link(f"{href}?{urlencode(next_args)}", "next", "Next page", page_type))
    if mode == "unmasked" and coll.personal_fields and page["numberReturned"]:
        audit_personal_read(coll.id, None, {"features": page["numberReturned"],
                                            "fields": coll.personal_fields})
    if query.fgb:
        # No JSON envelope in a FlatGeobuf file: counts and links travel in HTTP headers.
        headers = _content_crs(query.crs)
        headers.update({
            "OGC-NumberMatched": str(page["numberMatched"]),
            "OGC-NumberReturned": str(page["numberReturned"]),
            "Link": ", ".join(f'<{link["href"]}>; rel="{link["rel"]}"; type="{link["type"]}"'
                              for link in links),
            "Content-Disposition": f'inline; filename="{coll.id}.fgb"',
        })
        response = Response(page["features_fgb"], mimetype=ogc.FLATGEOBUF)
        response.headers.update(headers)
        return response
    head = {"type": "FeatureCollection", "numberMatched": page["numberMatched"],
            "numberReturned": page["numberReturned"], "timeStamp": page["timeStamp"],
            "links": links}
    body = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] \
        + ',"features":' + page["features_json"] + "}"
    return _json(body, ogc.GEOJSON, _content_crs(query.crs))


@bp.get("/ogc/collections/<collection_id>/items/<feature_id>")
def item(collection_id: str, feature_id: str):
    coll = ogc.get_collection(collection_id)
    ogc.check_params(request.args, ogc.ITEM_PARAMS)
    crs = ogc.parse_crs(request.args.get("crs"))
    mode = personal_data_mode()
    feature = json.loads(ogc.item(get_db(), coll, feature_id, crs, mode))
    href = f"{_base()}/collections/{coll.id}/items/{feature_id}"
    feature["links"] = [_link(href, "self", "This feature"),
                        _link(f"{_base()}/collections/{coll.id}", "collection", coll.title,
                              ogc.JSON)]
    if mode == "unmasked" and coll.personal_fields:
        audit_personal_read(coll.id, feature_id, {"fields": coll.personal_fields})
    return _json(feature, ogc.GEOJSON, _content_crs(crs))

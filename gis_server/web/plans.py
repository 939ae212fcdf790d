"""Planning API: validate layers, drafts (plans), impact, publish; import and export."""
from __future__ import annotations

import shapely
from flask import Blueprint, Response, request

from ..access import audit, principal
from ..core import gridio, params
from ..core import plans as core
from ..core import validation as v
from ..db import get_db
from ..errors import bad_param
from . import geojson

bp = Blueprint("plans", __name__)

SETTINGS_FIELDS = [f for f in v.Settings.__dataclass_fields__]


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_param("body", "the request body must be a JSON object")
    return body


def _settings_args() -> dict:
    return {k: request.args.get(k) for k in SETTINGS_FIELDS if request.args.get(k) is not None}


def _uploaded_features() -> tuple[list[dict], dict]:
    """Features from a multipart ``file`` upload or a GeoJSON FeatureCollection body."""
    if "file" in request.files:
        upload = request.files["file"]
        layer = gridio.read_layer(upload.read(), upload.filename)
        return layer["features"], {"crs": layer["crs"], "format": layer["format"]}
    body = request.get_json(silent=True)
    if body is None:
        raise bad_param("file", "send a GeoJSON FeatureCollection body or a multipart 'file' "
                                "(GeoJSON, GeoPackage, zipped Shapefile)")
    return gridio.features_from_geojson(body), {"crs": "EPSG:4326", "format": "geojson"}


def _actor() -> str:
    return principal().username


# -- validation of any layer -----------------------------------------------------------------
@bp.post("/api/v1/grids/validate")
def validate_layer():
    """Problems of a layer of grids (one level) against the current parents."""
    features, meta = _uploaded_features()
    level = params.level(request.args.get("level") or "unit", "level")
    if level == "district":
        raise bad_param("level", "level must be street, community or unit")
    conn = get_db()
    srid = v.metric_srid(conn)
    missing = [i for i, f in enumerate(features) if not f.get("parent_code")]
    if missing:
        raise bad_param("parent_code", f"features {missing[:10]} have no parent_code")
    parents = v.current_geoms(conn, {f["parent_code"] for f in features})
    settings = v.Settings.from_mapping(_settings_args(), level)
    for i, f in enumerate(features):
        f["code"] = f.get("code") or f"#{i}"
    problems = v.validate_layer(features, parents, srid, settings)
    return {"problems": problems, "summary": v.summary(problems), "grids": len(features),
            "source": meta, "settings": settings.to_dict()}


@bp.post("/api/v1/grids/repair")
def repair_layer():
    """Preview a snap-and-clean repair of a layer: repaired features + remaining problems."""
    features, _ = _uploaded_features()
    level = params.level(request.args.get("level") or "unit", "level")
    conn = get_db()
    srid = v.metric_srid(conn)
    for i, f in enumerate(features):
        if not f.get("parent_code"):
            raise bad_param("parent_code", f"feature {i} has no parent_code")
        f["code"] = f.get("code") or f"#{i}"
    parents = v.current_geoms(conn, {f["parent_code"] for f in features})
    repaired, problems = v.repair_layer(features, parents, srid,
                                        v.Settings.from_mapping(_settings_args(), level))
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f["code"], "geometry": shapely.geometry.mapping(f["geometry"]),
         "properties": {"code": f["code"], "name": f.get("name"),
                        "parent_code": f["parent_code"]}} for f in repaired]}
    return {"repaired": fc, "problems": problems, "summary": v.summary(problems)}


@bp.get("/api/v1/grids/hierarchy/validate")
def validate_hierarchy():
    return v.validate_hierarchy(get_db(), _settings_args())


# -- export ----------------------------------------------------------------------------------
def _plan_arg() -> int | None:
    value = request.args.get("plan")
    return None if value in (None, "") else params.integer(value, "plan", 1)


@bp.get("/api/v1/grids/export")
def export_layer():
    level = params.level(request.args.get("level") or "unit", "level")
    fmt = request.args.get("format", "geojson")
    plan_id = _plan_arg()
    conn = get_db()
    if plan_id is not None:
        level = core.get_plan(conn, plan_id)["level"]
    crs = request.args.get("crs")
    frame = gridio.layer_frame(conn, level, plan_id)
    data, mime, name = gridio.write_layer(frame, fmt, crs=crs,
                                          name=f"grids_{level}" + (f"_plan{plan_id}"
                                                                   if plan_id else ""))
    return Response(data, mimetype=mime,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/api/v1/grids/assignments.csv")
def assignments_csv():
    plan_id = _plan_arg()
    conn = get_db()
    if plan_id is not None:
        core.get_plan(conn, plan_id)
    return Response(gridio.building_assignments_csv(conn, plan_id), mimetype="text/csv",
                    headers={"Content-Disposition":
                             'attachment; filename="building_grids.csv"'})


# -- plans -----------------------------------------------------------------------------------
@bp.get("/api/v1/plans")
def plans_index():
    return {"plans": core.list_plans(get_db())}


@bp.post("/api/v1/plans")
def plans_create():
    body = _body()
    conn = get_db()
    scope = params.grid_code(body.get("scope"), "scope")
    plan = core.create_plan(conn, body.get("name"), body.get("level", "unit"), scope,
                            actor=_actor(), settings=body.get("settings"))
    audit("create", "plan", plan["id"], {"name": plan["name"], "level": plan["level"],
                                         "scope": plan["scope_code"]})
    conn.commit()
    return plan, 201


@bp.get("/api/v1/plans/<int:plan_id>")
def plan_detail(plan_id: int):
    return core.get_plan(get_db(), plan_id)


@bp.get("/api/v1/plans/<int:plan_id>/grids")
def plan_grids(plan_id: int):
    status = request.args.get("status")
    statuses = status.split(",") if status else None
    if statuses and set(statuses) - {"kept", "changed", "new", "removed"}:
        raise bad_param("status", "status must list kept, changed, new, removed")
    return geojson(core.plan_grids_fc(get_db(), plan_id, statuses=statuses))


def _write(action: str, plan_id: int, result, detail: dict | None = None, status: int = 200):
    audit(action, "plan", plan_id, detail)
    get_db().commit()
    return result, status


@bp.put("/api/v1/plans/<int:plan_id>/grids/<code>")
def plan_grid_replace(plan_id: int, code: str):
    params.grid_code(code, "code", required=True)
    body = _body()
    geom = gridio.geometry_from_geojson(body.get("geometry", body))
    feature = core.replace_grid(get_db(), plan_id, code, geom, name=body.get("name"),
                                actor=_actor())
    return _write("plan_replace_grid", plan_id, feature, {"code": code})


@bp.post("/api/v1/plans/<int:plan_id>/grids")
def plan_grid_add(plan_id: int):
    body = _body()
    geom = gridio.geometry_from_geojson(body.get("geometry"))
    props = body.get("properties") or {}
    code = params.grid_code(body.get("code") or props.get("code"), "code")
    feature = core.add_grid(get_db(), plan_id, geom,
                            body.get("parent_code") or props.get("parent_code"),
                            name=body.get("name") or props.get("name"), code=code,
                            actor=_actor())
    return _write("plan_add_grid", plan_id, feature, {"code": feature["id"]}, 201)


@bp.delete("/api/v1/plans/<int:plan_id>/grids/<code>")
def plan_grid_remove(plan_id: int, code: str):
    params.grid_code(code, "code", required=True)
    result = core.remove_grid(get_db(), plan_id, code, actor=_actor())
    return _write("plan_remove_grid", plan_id, result, {"code": code})


@bp.post("/api/v1/plans/<int:plan_id>/move-buildings")
def plan_move_buildings(plan_id: int):
    body = _body()
    ids = body.get("building_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise bad_param("building_ids", "building_ids must be a list of integers")
    to = params.grid_code(body.get("to"), "to", required=True)
    result = core.move_buildings(get_db(), plan_id, ids, to, actor=_actor())
    return _write("plan_move_buildings", plan_id, result, {"to": to, "buildings": len(ids)})


@bp.post("/api/v1/plans/<int:plan_id>/import")
def plan_import(plan_id: int):
    features, meta = _uploaded_features()
    keep = request.args.get("remove_missing", "true").lower() in ("1", "true", "yes")
    plan = core.load_layer(get_db(), plan_id, features, actor=_actor(), remove_missing=keep)
    return _write("plan_import", plan_id, {"plan": plan, "source": meta,
                                           "features": len(features)},
                  {"features": len(features), **meta})


@bp.post("/api/v1/plans/<int:plan_id>/undo")
def plan_undo(plan_id: int):
    result = core.undo(get_db(), plan_id)
    return _write("plan_undo", plan_id, result, {"undone": result["undone"]})


@bp.get("/api/v1/plans/<int:plan_id>/edits")
def plan_edits(plan_id: int):
    return {"edits": core.edits(get_db(), plan_id)}


@bp.get("/api/v1/plans/<int:plan_id>/validate")
def plan_validate(plan_id: int):
    full = request.args.get("full", "false").lower() in ("1", "true", "yes")
    return core.validate_plan(get_db(), plan_id, full=full)


@bp.post("/api/v1/plans/<int:plan_id>/repair")
def plan_repair(plan_id: int):
    accept = request.args.get("accept", "false").lower() in ("1", "true", "yes")
    conn = get_db()
    result = core.repair_plan(conn, plan_id, accept=accept, actor=_actor(),
                              overrides=_settings_args())
    if accept:
        return _write("plan_repair", plan_id, result,
                      {"grids": len(result["repaired"]["features"])})
    conn.rollback()
    return result


@bp.get("/api/v1/plans/<int:plan_id>/impact")
def plan_impact(plan_id: int):
    ids = request.args.get("ids", "true").lower() in ("1", "true", "yes")
    conn = get_db()
    result = core.impact(conn, plan_id, with_ids=ids)
    conn.rollback()  # drop the temp tables
    return result


@bp.post("/api/v1/plans/<int:plan_id>/publish")
def plan_publish(plan_id: int):
    body = request.get_json(silent=True) or {}
    version = body.get("version")
    if version is not None:
        version = params.integer(version, "version", 1)
    conn = get_db()
    try:
        result = core.publish(conn, plan_id, expected_version=version, actor=_actor(),
                              description=body.get("description"))
    except Exception:
        conn.rollback()
        raise
    return _write("plan_publish", plan_id, result,
                  {k: result[k] for k in ("generation_id", "closed_grids", "new_grids",
                                          "retired_codes", "workers_unassigned")})


@bp.post("/api/v1/plans/<int:plan_id>/discard")
def plan_discard(plan_id: int):
    return _write("plan_discard", plan_id, core.discard(get_db(), plan_id))

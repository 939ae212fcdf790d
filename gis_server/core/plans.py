"""Planning drafts: redraw grids, see the impact, publish a new generation.

A *plan* copies one level of the current generation (optionally only under a scope code) into
``plan_grids``; every row is ``kept``, ``changed``, ``new`` or ``removed`` relative to the grid
row it came from (``base_grid_id``). Edits (replace, add, remove, move buildings, import a whole
layer, accept a repair) write the rows they replace to ``plan_edits`` first, so
:func:`undo` can pop the log.

:func:`impact` and :func:`publish` are PostGIS set operations over the *changed area* only
(buildings/facilities/incidents in the old rows of changed grids or inside the new geometries),
never a Python loop over the city.

Publishing (:func:`publish`) is one transaction: an advisory lock plus ``FOR UPDATE`` on the
newest ``grid_generations`` row serialise publishers; a plan whose base generation is no longer
the newest is refused (409 ``stale_plan``: create a new plan), so two concurrent publishes
cannot both win. The plan is validated; blocking problems refuse it (409 with the problem
list). Old rows get ``valid_to = now()``, new rows ``valid_from = now()`` in a new generation;
buildings, households, facilities and open incidents in the changed area are re-derived,
closed incidents keep the grid row they had (which stays in ``grids`` as history);
``grid_parts`` are rebuilt for the changed grids only.

Worker assignments (``worker_grids``, by code): a changed grid keeps its code, so its workers
stay. A *retired* code's assignments move to the new grid that holds the largest part of the
retired grid's area; when no new grid overlaps it the workers are reported as
``unassigned_workers`` in the impact and their rows are removed at publish (listed in the
publish result and the audit log). Retired codes go to ``retired_codes`` and are never reused.
"""
from __future__ import annotations

import json

import numpy as np
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError, bad_param, not_found
from . import codes as codes_mod
from . import validation as v
from .accounts import scope_prefix
from .grids import PREFIX_DIGITS

PLAN_LEVELS = ("street", "community", "unit")
# Open incidents follow the redraw; closed ones (closed, evaluated, rejected) keep their grid.
OPEN_INCIDENT = "({i}.closed_at IS NULL AND {i}.status NOT IN ('closed', 'evaluated', 'rejected'))"
PARENT_LEVEL = {"unit": "community", "community": "street", "street": "district"}
CHILD_LEVEL = {"street": "community", "community": "unit"}
SNAPSHOT_COLUMNS = ("code", "name", "level", "parent_code", "status", "base_grid_id",
                    "target_households")


# -- helpers ---------------------------------------------------------------------------------
def _ancestor_sql(level: str, column: str = "u.code") -> str:
    """SQL: the code of the ``level`` ancestor of a unit grid code (by code prefix)."""
    if level == "unit":
        return column
    n = PREFIX_DIGITS[level]
    return f"rpad(left({column}, {n}), length({column}), '0')"


def _geom_param(geom) -> str:
    """Hex EWKB MultiPolygon (SRID 4326) of a shapely polygon for SQL parameters."""
    geom = v.polygonal(geom)
    if shapely.get_type_id(geom) == 3:
        geom = shapely.MultiPolygon([geom])
    return shapely.to_wkb(shapely.set_srid(geom, 4326), hex=True, include_srid=True)


def get_plan(conn: Connection, plan_id: int, for_update: bool = False) -> dict:
    row = conn.execute(text(
        "SELECT id, name, level, scope_code, status, base_generation_id, "
        "published_generation_id, version, created_by, created_at, updated_at, published_at, "
        "settings FROM plans WHERE id = :id" + (" FOR UPDATE" if for_update else "")),
        {"id": plan_id}).mappings().first()
    if row is None:
        raise not_found("plan", plan_id)
    plan = dict(row)
    for k in ("created_at", "updated_at", "published_at"):
        if plan[k] is not None:
            plan[k] = plan[k].isoformat()
    counts = dict(conn.execute(text(
        "SELECT status, count(*) FROM plan_grids WHERE plan_id = :id GROUP BY status"),
        {"id": plan_id}).all())
    plan["grids"] = {s: counts.get(s, 0) for s in ("kept", "changed", "new", "removed")}
    return plan


def _draft(conn: Connection, plan_id: int) -> dict:
    plan = get_plan(conn, plan_id, for_update=True)
    if plan["status"] != "draft":
        raise APIError(409, "not_a_draft", f"plan {plan_id} is {plan['status']}; "
                                           "only drafts can be edited")
    return plan


def list_plans(conn: Connection) -> list[dict]:
    ids = conn.execute(text("SELECT id FROM plans ORDER BY id")).scalars().all()
    return [get_plan(conn, i) for i in ids]


def current_generation(conn: Connection, lock: bool = False) -> int:
    gen = conn.execute(text("SELECT max(id) FROM grid_generations")).scalar()
    if gen is None:
        raise APIError(409, "no_city", "no grids are loaded yet")
    if lock:
        conn.execute(text("SELECT id FROM grid_generations WHERE id = :g FOR UPDATE"),
                     {"g": gen})
    return gen


def create_plan(conn: Connection, name: str, level: str = "unit", scope: str | None = None,
                actor: str | None = None, settings: dict | None = None) -> dict:
    """A draft holding a copy of the current ``level`` grids (under ``scope`` if given)."""
    if not name or not str(name).strip():
        raise bad_param("name", "name is required")
    if level not in PLAN_LEVELS:
        raise bad_param("level", f"level must be one of {', '.join(PLAN_LEVELS)}")
    prefix = scope_prefix(scope) if scope else ""
    if scope and not conn.execute(text(
            "SELECT 1 FROM grids WHERE code = :c AND valid_to IS NULL"), {"c": scope}).first():
        raise bad_param("scope", f"scope {scope!r} is not a current grid code")
    v.Settings.from_mapping(settings, level)  # validates the numbers
    gen = current_generation(conn)
    plan_id = conn.execute(text("""
        INSERT INTO plans (name, level, scope_code, base_generation_id, created_by, settings)
        VALUES (:name, :level, :scope, :gen, :actor, CAST(:settings AS jsonb)) RETURNING id
    """), {"name": str(name).strip(), "level": level, "scope": prefix, "gen": gen,
           "actor": actor, "settings": json.dumps(settings or {})}).scalar_one()
    conn.execute(text("""
        INSERT INTO plan_grids (plan_id, code, name, level, parent_code, geom, status,
                                base_grid_id, target_households)
        SELECT :pid, g.code, g.name, g.level, p.code, g.geom, 'kept', g.id, g.target_households
        FROM grids g LEFT JOIN grids p ON p.id = g.parent_id
        WHERE g.level = :level AND g.valid_to IS NULL AND starts_with(g.code, :prefix)
    """), {"pid": plan_id, "level": level, "prefix": prefix})
    return get_plan(conn, plan_id)


# -- the edit log ----------------------------------------------------------------------------
def _snapshot(conn: Connection, plan_id: int, action: str, codes, actor: str | None) -> None:
    conn.execute(text("""
        INSERT INTO plan_edits (plan_id, actor, action, codes, before)
        SELECT :pid, :actor, :action, CAST(:codes AS varchar[]),
               coalesce(jsonb_agg(jsonb_build_object(
                   'code', code, 'name', name, 'level', level, 'parent_code', parent_code,
                   'status', status, 'base_grid_id', base_grid_id,
                   'target_households', target_households,
                   'geom', encode(ST_AsEWKB(geom), 'hex'))), '[]'::jsonb)
        FROM plan_grids WHERE plan_id = :pid AND code = ANY(CAST(:codes AS varchar[]))
    """), {"pid": plan_id, "actor": actor, "action": action, "codes": sorted(set(codes))})


def _touch(conn: Connection, plan_id: int) -> None:
    conn.execute(text("UPDATE plans SET version = version + 1, updated_at = now() "
                      "WHERE id = :id"), {"id": plan_id})


def undo(conn: Connection, plan_id: int) -> dict:
    """Pop the last edit: restore the rows it replaced (and drop rows it created)."""
    _draft(conn, plan_id)
    edit = conn.execute(text(
        "SELECT id, action, codes, before FROM plan_edits WHERE plan_id = :pid "
        "ORDER BY id DESC LIMIT 1"), {"pid": plan_id}).mappings().first()
    if edit is None:
        raise APIError(409, "nothing_to_undo", f"plan {plan_id} has no edit to undo")
    conn.execute(text("DELETE FROM plan_grids WHERE plan_id = :pid AND code = ANY(:codes)"),
                 {"pid": plan_id, "codes": list(edit["codes"])})
    conn.execute(text("""
        INSERT INTO plan_grids (plan_id, code, name, level, parent_code, geom, status,
                                base_grid_id, target_households)
        SELECT :pid, r.code, r.name, r.level, r.parent_code,
               ST_GeomFromEWKB(decode(r.geom, 'hex')), r.status, r.base_grid_id,
               r.target_households
        FROM jsonb_to_recordset(CAST(:before AS jsonb)) AS r(
            code text, name text, level text, parent_code text, status text,
            base_grid_id integer, target_households integer, geom text)
    """), {"pid": plan_id, "before": json.dumps(edit["before"])})
    conn.execute(text("DELETE FROM plan_edits WHERE id = :id"), {"id": edit["id"]})
    _touch(conn, plan_id)
    return {"undone": edit["action"], "codes": list(edit["codes"]),
            "plan": get_plan(conn, plan_id)}


def edits(conn: Connection, plan_id: int) -> list[dict]:
    get_plan(conn, plan_id)
    return [dict(r._mapping, at=r.at.isoformat()) for r in conn.execute(text(
        "SELECT id, at, actor, action, codes FROM plan_edits WHERE plan_id = :pid "
        "ORDER BY id"), {"pid": plan_id})]


# -- edits -----------------------------------------------------------------------------------
def _grid_row(conn: Connection, plan_id: int, code: str):
    return conn.execute(text(
        "SELECT code, status, base_grid_id, parent_code, level FROM plan_grids "
        "WHERE plan_id = :pid AND code = :code"), {"pid": plan_id, "code": code}).first()


def _check_parent(conn: Connection, level: str, parent_code: str | None) -> str:
    if not parent_code:
        raise bad_param("parent_code", "parent_code is required")
    ok = conn.execute(text(
        "SELECT 1 FROM grids WHERE code = :c AND level = :l AND valid_to IS NULL"),
        {"c": parent_code, "l": PARENT_LEVEL[level]}).first()
    if not ok:
        raise bad_param("parent_code", f"parent_code {parent_code!r} is not a current "
                                       f"{PARENT_LEVEL[level]} grid")
    return parent_code


def replace_grid(conn: Connection, plan_id: int, code: str, geom, name: str | None = None,
                 actor: str | None = None) -> dict:
    plan = _draft(conn, plan_id)
    row = _grid_row(conn, plan_id, code)
    if row is None:
        raise not_found("plan grid", code)
    _snapshot(conn, plan_id, "replace", [code], actor)
    status = "new" if row.base_grid_id is None else "changed"
    conn.execute(text("""
        UPDATE plan_grids SET geom = ST_GeomFromEWKB(decode(:g, 'hex')), status = :status,
               name = coalesce(:name, name)
        WHERE plan_id = :pid AND code = :code
    """), {"g": _geom_param(geom), "status": status, "name": name, "pid": plan_id,
           "code": code})
    _touch(conn, plan_id)
    return grid_feature(conn, plan["id"], code)


def add_grid(conn: Connection, plan_id: int, geom, parent_code: str | None,
             name: str | None = None, code: str | None = None,
             actor: str | None = None) -> dict:
    plan = _draft(conn, plan_id)
    parent_code = _check_parent(conn, plan["level"], parent_code)
    plan_codes = set(conn.execute(text("SELECT code FROM plan_grids WHERE plan_id = :pid"),
                                  {"pid": plan_id}).scalars())
    if code:
        prefix, _, _ = codes_mod._layout(plan["level"], parent_code)
        if not code.startswith(prefix):
            raise bad_param("code", f"code {code} does not belong under {parent_code}")
        if code in codes_mod.used_codes(conn, prefix, plan_codes):
            raise APIError(409, "code_taken", f"code {code} is in use or retired (codes are "
                                              "never reused)", field="code")
    else:
        srid = v.metric_srid(conn)
        code = codes_mod.assign(conn, plan["level"], parent_code,
                                v.to_metric(np.array([geom], dtype=object), srid),
                                plan_codes)[0]
    _snapshot(conn, plan_id, "add", [code], actor)
    conn.execute(text("""
        INSERT INTO plan_grids (plan_id, code, name, level, parent_code, geom, status)
        VALUES (:pid, :code, :name, :level, :parent, ST_GeomFromEWKB(decode(:g, 'hex')), 'new')
    """), {"pid": plan_id, "code": code, "name": name or "", "level": plan["level"],
           "parent": parent_code, "g": _geom_param(geom)})
    _touch(conn, plan_id)
    return grid_feature(conn, plan_id, code)


def remove_grid(conn: Connection, plan_id: int, code: str, actor: str | None = None) -> dict:
    _draft(conn, plan_id)
    row = _grid_row(conn, plan_id, code)
    if row is None or row.status == "removed":
        raise not_found("plan grid", code)
    _snapshot(conn, plan_id, "remove", [code], actor)
    if row.base_grid_id is None:
        conn.execute(text("DELETE FROM plan_grids WHERE plan_id = :pid AND code = :code"),
                     {"pid": plan_id, "code": code})
    else:
        conn.execute(text("UPDATE plan_grids SET status = 'removed' "
                          "WHERE plan_id = :pid AND code = :code"),
                     {"pid": plan_id, "code": code})
    _touch(conn, plan_id)
    return {"code": code, "removed": True}


def move_buildings(conn: Connection, plan_id: int, building_ids: list[int], to_code: str,
                   actor: str | None = None, margin_m: float = 1.0) -> dict:
    """Move buildings to grid ``to_code``: their footprints (plus ``margin_m``) are added to
    that grid and cut out of the plan's other grids."""
    plan = _draft(conn, plan_id)
    if plan["level"] != "unit":
        raise bad_param("to", "buildings can be moved between unit grids only")
    if not building_ids:
        raise bad_param("building_ids", "building_ids must list at least one building")
    row = _grid_row(conn, plan_id, to_code)
    if row is None or row.status == "removed":
        raise not_found("plan grid", to_code)
    found = conn.execute(text("SELECT count(*) FROM buildings WHERE id = ANY(:ids)"),
                         {"ids": building_ids}).scalar_one()
    if found != len(set(building_ids)):
        raise bad_param("building_ids", "some building_ids do not exist (or are out of scope)")
    srid = v.metric_srid(conn)
    params = {"pid": plan_id, "ids": building_ids, "to": to_code, "srid": srid,
              "m": margin_m}
    fp_sql = """(SELECT ST_Transform(ST_Buffer(ST_Union(ST_Transform(geom, :srid)), :m), 4326)
                 FROM buildings WHERE id = ANY(:ids))"""
    touched = conn.execute(text(f"""
        SELECT code FROM plan_grids WHERE plan_id = :pid AND status <> 'removed'
          AND ST_Intersects(geom, {fp_sql})
    """), params).scalars().all()
    _snapshot(conn, plan_id, "move_buildings", set(touched) | {to_code}, actor)
    conn.execute(text(f"""
        WITH fp AS (SELECT {fp_sql} AS g)
        UPDATE plan_grids pg SET
            geom = ST_Multi(ST_CollectionExtract(ST_MakeValid(
                CASE WHEN pg.code = :to THEN ST_Union(pg.geom, fp.g)
                     ELSE ST_Difference(pg.geom, fp.g) END), 3)),
            status = CASE WHEN pg.base_grid_id IS NULL THEN 'new' ELSE 'changed' END
        FROM fp
        WHERE pg.plan_id = :pid AND pg.status <> 'removed'
          AND (pg.code = :to OR ST_Intersects(pg.geom, fp.g))
    """), params)
    _touch(conn, plan_id)
    return {"moved": sorted(set(building_ids)), "to": to_code,
            "changed": sorted(set(touched) | {to_code})}


def load_layer(conn: Connection, plan_id: int, features: list[dict],
               actor: str | None = None, remove_missing: bool = True) -> dict:
    """Load a whole layer into a draft (``grids import --plan``).

    ``features``: dicts with ``geometry`` (shapely, EPSG:4326), optional ``code``, ``name``,
    ``parent_code``. A feature whose code is in the plan replaces that grid (``kept`` when the
    geometry is unchanged); one without a known code is ``new`` and gets a code (reading order
    in its parent); plan grids missing from the layer are ``removed`` (``remove_missing``).
    """
    plan = _draft(conn, plan_id)
    level = plan["level"]
    existing = {r.code: r for r in conn.execute(text(
        "SELECT code, parent_code, base_grid_id, status FROM plan_grids WHERE plan_id = :pid"),
        {"pid": plan_id})}
    srid = v.metric_srid(conn)
    seen, new_by_parent = set(), {}
    for i, f in enumerate(features):
        code = f.get("code")
        if code and code in existing:
            if code in seen:
                raise bad_param("code", f"code {code} appears twice in the layer")
            seen.add(code)
        else:
            parent = f.get("parent_code") or _parent_by_location(conn, level, f["geometry"])
            if not parent:
                raise bad_param("parent_code", f"feature {i}: no parent_code and no "
                                               f"{PARENT_LEVEL[level]} grid contains it")
            _check_parent(conn, level, parent)
            f["parent_code"] = parent
            new_by_parent.setdefault(parent, []).append(i)
    plan_codes = set(existing)
    for parent, idx in new_by_parent.items():
        metric = v.to_metric(np.array([features[i]["geometry"] for i in idx], dtype=object),
                             srid)
        fresh = codes_mod.assign(conn, level, parent, metric, plan_codes)
        for i, c in zip(idx, fresh):
            features[i]["new_code"] = c
            plan_codes.add(c)
    removed = sorted(set(existing) - seen) if remove_missing else []
    touched = seen | set(removed) | {f["new_code"] for f in features if "new_code" in f}
    _snapshot(conn, plan_id, "import", touched, actor)
    rows = []
    for f in features:
        code = f.get("new_code") or f["code"]
        rows.append({"code": code, "name": f.get("name") or "",
                     "parent": f.get("parent_code") or existing.get(code, None)
                     and existing[code].parent_code,
                     "g": _geom_param(f["geometry"]), "new": "new_code" in f})
    conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS _plan_import (code text, name text, "
                      "parent text, g text, is_new boolean) ON COMMIT DROP"))
    conn.execute(text("TRUNCATE _plan_import"))
    if rows:
        conn.execute(text("INSERT INTO _plan_import VALUES (:code, :name, :parent, :g, :new)"),
                     rows)
    conn.execute(text("""
        UPDATE plan_grids pg SET geom = ST_GeomFromEWKB(decode(i.g, 'hex')),
               name = CASE WHEN i.name <> '' THEN i.name ELSE pg.name END,
               status = CASE WHEN pg.base_grid_id IS NULL THEN 'new'
                             WHEN ST_Equals(b.geom, ST_GeomFromEWKB(decode(i.g, 'hex')))
                             THEN 'kept' ELSE 'changed' END
        FROM _plan_import i, grids b
        WHERE pg.plan_id = :pid AND pg.code = i.code AND NOT i.is_new
          AND b.id = pg.base_grid_id
    """), {"pid": plan_id})
    conn.execute(text("""
        UPDATE plan_grids pg SET geom = ST_GeomFromEWKB(decode(i.g, 'hex')), status = 'new'
        FROM _plan_import i
        WHERE pg.plan_id = :pid AND pg.code = i.code AND NOT i.is_new
          AND pg.base_grid_id IS NULL
    """), {"pid": plan_id})
    conn.execute(text("""
        INSERT INTO plan_grids (plan_id, code, name, level, parent_code, geom, status)
        SELECT :pid, i.code, i.name, :level, i.parent, ST_GeomFromEWKB(decode(i.g, 'hex')),
               'new'
        FROM _plan_import i WHERE i.is_new
    """), {"pid": plan_id, "level": level})
    if removed:
        conn.execute(text("UPDATE plan_grids SET status = 'removed' WHERE plan_id = :pid "
                          "AND code = ANY(:codes) AND base_grid_id IS NOT NULL"),
                     {"pid": plan_id, "codes": removed})
        conn.execute(text("DELETE FROM plan_grids WHERE plan_id = :pid "
                          "AND code = ANY(:codes) AND base_grid_id IS NULL"),
                     {"pid": plan_id, "codes": removed})
    _touch(conn, plan_id)
    return get_plan(conn, plan_id)


def _parent_by_location(conn: Connection, level: str, geom) -> str | None:
    return conn.execute(text("""
        SELECT code FROM grids
        WHERE level = :pl AND valid_to IS NULL
          AND ST_Intersects(geom, ST_PointOnSurface(ST_GeomFromEWKB(decode(:g, 'hex'))))
        ORDER BY code LIMIT 1
    """), {"pl": PARENT_LEVEL[level], "g": _geom_param(geom)}).scalar()


# -- reading ---------------------------------------------------------------------------------
def grid_feature(conn: Connection, plan_id: int, code: str) -> dict:
    fc = plan_grids_fc(conn, plan_id, codes=[code])
    if not fc["features"]:
        raise not_found("plan grid", code)
    return fc["features"][0]


def plan_grids_fc(conn: Connection, plan_id: int, codes=None, statuses=None) -> dict:
    from .features import feature_collection
    get_plan(conn, plan_id)
    where, params = ["plan_id = :pid"], {"pid": plan_id}
    if codes is not None:
        where.append("code = ANY(:codes)")
        params["codes"] = list(codes)
    if statuses is not None:
        where.append("status = ANY(:st)")
        params["st"] = list(statuses)
    return feature_collection(conn, f"""
        SELECT code, name, level, parent_code, status, base_grid_id, target_households, geom
        FROM plan_grids WHERE {' AND '.join(where)} ORDER BY code
    """, params, id_column="code")


def _layer(conn: Connection, plan_id: int, where: str = "", params: dict | None = None):
    rows = conn.execute(text(f"""
        SELECT code, parent_code, status, ST_AsBinary(geom) AS wkb FROM plan_grids
        WHERE plan_id = :pid AND status <> 'removed' {where} ORDER BY code
    """), {"pid": plan_id, **(params or {})}).all()
    geoms = shapely.from_wkb([r.wkb for r in rows]) if rows else []
    return [{"code": r.code, "parent_code": r.parent_code, "status": r.status, "geometry": g}
            for r, g in zip(rows, geoms)]


def affected_parents(conn: Connection, plan_id: int) -> list[str]:
    return conn.execute(text("""
        SELECT DISTINCT parent_code FROM plan_grids
        WHERE plan_id = :pid AND status <> 'kept' AND parent_code IS NOT NULL
    """), {"pid": plan_id}).scalars().all()


def validate_plan(conn: Connection, plan_id: int, full: bool = False) -> dict:
    """Problems of the draft: the sibling groups it touches (``full``: every group)."""
    plan = get_plan(conn, plan_id)
    srid = v.metric_srid(conn)
    settings = v.Settings.from_mapping(plan["settings"], plan["level"])
    if full:
        children = _layer(conn, plan_id)
        parents_codes = {c["parent_code"] for c in children}
    else:
        parents_codes = set(affected_parents(conn, plan_id))
        children = _layer(conn, plan_id, "AND parent_code = ANY(:pc)",
                          {"pc": sorted(parents_codes)})
    parents = v.current_geoms(conn, parents_codes)
    problems = v.validate_layer(children, parents, srid, settings)
    for p in problems:
        p["level"] = plan["level"]
    # A redrawn community/street must still hold its current children.
    if plan["level"] in CHILD_LEVEL:
        changed = {c["code"]: c["geometry"] for c in children if c["status"] != "kept"}
        removed = conn.execute(text("SELECT code FROM plan_grids WHERE plan_id = :pid AND "
                                    "status = 'removed'"), {"pid": plan_id}).scalars().all()
        targets = set(changed) | set(removed)
        if targets:
            kids = [k for k in v.current_layer(conn, CHILD_LEVEL[plan["level"]])
                    if k["parent_code"] in targets]
            child_settings = v.Settings.from_mapping(plan["settings"],
                                                     CHILD_LEVEL[plan["level"]])
            for p in v.validate_layer(kids, changed, srid, child_settings):
                if p["type"] in ("outside_parent", "gap"):
                    p["level"] = CHILD_LEVEL[plan["level"]]
                    problems.append(p)
    return {"plan": plan_id, "problems": problems, "summary": v.summary(problems),
            "checked_parents": sorted(parents_codes), "settings": settings.to_dict()}


def repair_plan(conn: Connection, plan_id: int, accept: bool = False,
                actor: str | None = None, overrides: dict | None = None) -> dict:
    """Snap and clean the touched sibling groups. Preview by default (nothing stored): the
    repaired geometries of the grids that would change and the problems left. ``accept``
    stores them as one edit (undoable)."""
    plan = _draft(conn, plan_id) if accept else get_plan(conn, plan_id)
    srid = v.metric_srid(conn)
    settings = v.Settings.from_mapping({**plan["settings"], **(overrides or {})},
                                       plan["level"])
    parents_codes = set(affected_parents(conn, plan_id))
    children = _layer(conn, plan_id, "AND parent_code = ANY(:pc)",
                      {"pc": sorted(parents_codes)})
    parents = v.current_geoms(conn, parents_codes)
    repaired, remaining = v.repair_layer(children, parents, srid, settings)
    changed = [(c, r) for c, r in zip(children, repaired)
               if not shapely.equals_exact(c["geometry"], r["geometry"], 1e-9)]
    preview = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": r["code"], "geometry": shapely.geometry.mapping(
            r["geometry"]), "properties": {"code": r["code"], "parent_code": r["parent_code"]}}
        for _, r in changed]}
    if accept and changed:
        _snapshot(conn, plan_id, "repair", [r["code"] for _, r in changed], actor)
        conn.execute(text("""
            UPDATE plan_grids SET geom = ST_GeomFromEWKB(decode(:g, 'hex')),
                   status = CASE WHEN base_grid_id IS NULL THEN 'new' ELSE 'changed' END
            WHERE plan_id = :pid AND code = :code
        """), [{"pid": plan_id, "code": r["code"], "g": _geom_param(r["geometry"])}
               for _, r in changed])
        _touch(conn, plan_id)
    return {"plan": plan_id, "accepted": bool(accept and changed), "repaired": preview,
            "problems": remaining, "summary": v.summary(remaining)}


# -- impact ----------------------------------------------------------------------------------
def _plan_copy(conn: Connection, plan_id: int) -> None:
    """Temp table ``_pg``: the plan's grids, indexed and analysed (a fresh ``plan_grids`` has
    no statistics for the request role to rely on, and bad estimates cost seconds)."""
    conn.execute(text("DROP TABLE IF EXISTS _pg"))
    conn.execute(text("""
        CREATE TEMP TABLE _pg ON COMMIT DROP AS
        SELECT code, name, level, parent_code, status, base_grid_id, target_households, geom
        FROM plan_grids WHERE plan_id = :pid
    """), {"pid": plan_id})
    conn.execute(text("CREATE INDEX ON _pg USING gist (geom)"))
    conn.execute(text("CREATE INDEX ON _pg (code)"))
    conn.execute(text("ANALYZE _pg"))


def _moves(conn: Connection, plan_id: int, level: str) -> None:
    """Temp tables ``_b_moves`` / ``_f_moves`` / ``_i_moves``: every building, facility and
    open incident in the changed area with its old and new grid code at the plan's level."""
    _plan_copy(conn, plan_id)
    anc = _ancestor_sql(level)
    old_units = f"""
        SELECT u.id FROM grids u JOIN _pg pg ON true
          AND pg.status IN ('changed', 'removed')
          AND {_ancestor_sql(level, 'u.code')} = pg.code
        WHERE u.level = 'unit' AND u.valid_to IS NULL""" if level != "unit" else """
        SELECT base_grid_id FROM _pg WHERE true
          AND status IN ('changed', 'removed')"""
    new_code = """(SELECT pg.code FROM _pg pg WHERE true
                     AND pg.status <> 'removed' AND ST_Intersects(pg.geom, {pt})
                   ORDER BY pg.code LIMIT 1)"""
    for table, src, pt, extra in (
            ("_b_moves", "buildings", "anchor", ""),
            ("_f_moves", "facilities", "geom", ""),
            ("_i_moves", "incidents", "geom", f"AND {OPEN_INCIDENT.format(i='x')}")):
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(f"""
            CREATE TEMP TABLE {table} ON COMMIT DROP AS
            WITH old_units AS ({old_units}),
            cand AS (
                SELECT x.id, x.{pt} AS pt, x.grid_id FROM {src} x
                WHERE x.grid_id IN (SELECT * FROM old_units) {extra}
                UNION
                SELECT x.id, x.{pt}, x.grid_id FROM {src} x
                JOIN _pg pg ON pg.status IN ('changed', 'new')
                 AND ST_Intersects(pg.geom, x.{pt})
                WHERE true {extra}
            )
            SELECT c.id, c.grid_id AS old_grid_id, {anc} AS old_code,
                   {new_code.format(pt='c.pt')} AS new_code
            FROM cand c LEFT JOIN grids u ON u.id = c.grid_id
        """), {"pid": plan_id})
        conn.execute(text(f"CREATE INDEX ON {table} (id)"))


def _transitions(conn: Connection, sql: str, params: dict, with_ids: bool = True) -> list:
    rows = conn.execute(text(sql), params).mappings().all()
    out = []
    for r in rows:
        item = {"from": r["from"], "to": r["to"], "count": int(r["count"])}
        if with_ids and r.get("ids") is not None:
            item["ids"] = list(r["ids"])
        out.append(item)
    return out


def _worker_moves(conn: Connection, plan_id: int, srid: int) -> list[dict]:
    """Assignments of retired codes → the new grid holding most of the old grid's area."""
    rows = conn.execute(text("""
        WITH retired AS (
            SELECT pg.code, b.geom FROM _pg pg JOIN grids b ON b.id = pg.base_grid_id
            WHERE pg.status = 'removed'
        ),
        best AS (
            SELECT DISTINCT ON (r.code) r.code AS old_code, n.code AS new_code,
                   ST_Area(ST_Transform(ST_Intersection(r.geom, n.geom), :srid)) AS shared
            FROM retired r JOIN _pg n ON n.status <> 'removed'
             AND ST_Intersects(r.geom, n.geom)
            ORDER BY r.code, shared DESC, n.code
        )
        SELECT wg.worker_id, w.role, wg.is_responsible, wg.grid_code AS "from",
               CASE WHEN best.shared > 0 THEN best.new_code END AS "to"
        FROM worker_grids wg JOIN retired r ON r.code = wg.grid_code
        JOIN workers w ON w.id = wg.worker_id
        LEFT JOIN best ON best.old_code = r.code
        ORDER BY wg.grid_code, wg.worker_id
    """), {"pid": plan_id, "srid": srid}).mappings().all()
    return [dict(r) for r in rows]


def impact(conn: Connection, plan_id: int, with_ids: bool = True) -> dict:
    """Old → new transitions and per-grid load, balance and compactness of the draft."""
    plan = get_plan(conn, plan_id)  # through RLS: an invisible plan is a 404
    result = _impact(conn, plan, with_ids)
    _drop_temp(conn)
    return result


def _drop_temp(conn: Connection) -> None:
    """Drop the work tables now (they would go at commit) so that the same transaction can
    run another impact under another role."""
    conn.execute(text("DROP TABLE IF EXISTS _pg, _b_moves, _f_moves, _i_moves"))


def _impact(conn: Connection, plan: dict, with_ids: bool) -> dict:
    plan_id = plan["id"]
    level = plan["level"]
    srid = v.metric_srid(conn)
    _moves(conn, plan_id, level)
    p = {"pid": plan_id}
    ids = ", array_agg(m.id ORDER BY m.id) AS ids" if with_ids else ""
    moved = "m.old_code IS DISTINCT FROM m.new_code"
    tr = {
        "buildings": _transitions(conn, f"""
            SELECT m.old_code AS "from", m.new_code AS "to", count(*) AS count {ids}
            FROM _b_moves m WHERE {moved} GROUP BY 1, 2 ORDER BY 1, 2""", p, with_ids),
        "households": _transitions(conn, f"""
            SELECT m.old_code AS "from", m.new_code AS "to", count(*) AS count
                   {', array_agg(h.id ORDER BY h.id) AS ids' if with_ids else ''}
            FROM _b_moves m JOIN households h ON h.building_id = m.id
            WHERE {moved} GROUP BY 1, 2 ORDER BY 1, 2""", p, with_ids),
        "persons": _transitions(conn, f"""
            SELECT m.old_code AS "from", m.new_code AS "to", sum(h.size) AS count
            FROM _b_moves m JOIN households h ON h.building_id = m.id
            WHERE {moved} GROUP BY 1, 2 ORDER BY 1, 2""", p, False),
        "facilities": _transitions(conn, f"""
            SELECT m.old_code AS "from", m.new_code AS "to", count(*) AS count {ids}
            FROM _f_moves m WHERE {moved} GROUP BY 1, 2 ORDER BY 1, 2""", p, with_ids),
        "open_incidents": _transitions(conn, f"""
            SELECT m.old_code AS "from", m.new_code AS "to", count(*) AS count {ids}
            FROM _i_moves m WHERE {moved} GROUP BY 1, 2 ORDER BY 1, 2""", p, with_ids),
    }
    workers = _worker_moves(conn, plan_id, srid)
    tr["workers"] = [w for w in workers if w["to"]]
    straddling = [dict(r._mapping) for r in conn.execute(text("""
        SELECT b.id, array_agg(pg.code ORDER BY pg.code) AS grids
        FROM _b_moves m JOIN buildings b ON b.id = m.id
        JOIN _pg pg ON pg.status <> 'removed'
         AND ST_Intersects(pg.geom, b.geom) AND NOT ST_Touches(pg.geom, b.geom)
        GROUP BY b.id HAVING count(*) > 1 ORDER BY b.id
    """), p)]
    grids, balance = _grid_stats(conn, plan_id, level, srid)
    totals = {k: sum(t["count"] for t in rows) for k, rows in tr.items() if k != "workers"}
    totals["workers"] = len(tr["workers"])
    return {"plan": plan_id, "level": level, "base_generation_id": plan["base_generation_id"],
            "changed_grids": {s: plan["grids"][s] for s in ("changed", "new", "removed")},
            "moved": totals, "transitions": tr,
            "unassigned_workers": [w for w in workers if not w["to"]],
            "straddling_buildings": straddling, "grids": grids, "balance": balance}


def _grid_stats(conn: Connection, plan_id: int, level: str, srid: int):
    """Per draft grid in the touched parents: load, area, compactness, contiguity."""
    parents = affected_parents(conn, plan_id)
    anc = _ancestor_sql(level)
    rows = conn.execute(text(f"""
        WITH g AS (
            SELECT code, parent_code, status, target_households, base_grid_id,
                   ST_Transform(geom, :srid) AS m
            FROM _pg WHERE status <> 'removed'
              AND parent_code = ANY(:parents)
        ),
        stay AS (   -- buildings not in the changed area keep their grid
            SELECT {anc} AS code, b.id FROM buildings b JOIN grids u ON u.id = b.grid_id
            WHERE u.valid_to IS NULL AND {anc} IN (SELECT code FROM g)
              AND NOT EXISTS (SELECT 1 FROM _b_moves m WHERE m.id = b.id)
        ),
        assigned AS (
            SELECT code, id FROM stay
            UNION ALL SELECT new_code, id FROM _b_moves WHERE new_code IN (SELECT code FROM g)
        ),
        load AS (
            SELECT a.code, count(DISTINCT a.id) AS buildings, count(h.id) AS households,
                   coalesce(sum(h.size), 0) AS residents
            FROM assigned a LEFT JOIN households h ON h.building_id = a.id
            GROUP BY a.code
        )
        SELECT g.code, g.parent_code, g.status, g.target_households,
               coalesce(l.buildings, 0) AS buildings, coalesce(l.households, 0) AS households,
               coalesce(l.residents, 0) AS residents,
               ST_Area(g.m) AS area_m2, ST_Perimeter(g.m) AS perimeter_m,
               ST_Area(ST_MinimumBoundingCircle(g.m)) AS circle_m2,
               ST_Area(ST_ConvexHull(g.m)) AS hull_m2, ST_NumGeometries(g.m) AS parts
        FROM g LEFT JOIN load l ON l.code = g.code ORDER BY g.code
    """), {"pid": plan_id, "srid": srid, "parents": parents}).mappings().all()
    grids = []
    by_parent: dict[str, list[dict]] = {}
    for r in rows:
        a, per = r["area_m2"], r["perimeter_m"]
        item = {
            "code": r["code"], "parent_code": r["parent_code"], "status": r["status"],
            "buildings": int(r["buildings"]), "households": int(r["households"]),
            "residents": int(r["residents"]), "area_m2": round(a, 1),
            "polsby_popper": round(4 * np.pi * a / per ** 2, 4) if per else None,
            "reock": round(a / r["circle_m2"], 4) if r["circle_m2"] else None,
            "convex_hull_ratio": round(a / r["hull_m2"], 4) if r["hull_m2"] else None,
            "contiguous": r["parts"] == 1, "parts": int(r["parts"]),
            "target_households": r["target_households"],
        }
        grids.append(item)
        by_parent.setdefault(r["parent_code"], []).append(item)
    balance = []
    for parent, items in sorted(by_parent.items()):
        hh = [i["households"] for i in items]
        targets = [i["target_households"] for i in items if i["target_households"]]
        target = float(np.mean(targets)) if targets else float(np.mean(hh))
        for i in items:
            i["deviation"] = round((i["households"] - target) / target, 4) if target else None
        balance.append({"parent_code": parent, "grids": len(items),
                        "households_min": min(hh), "households_max": max(hh),
                        "target_households": round(target, 1),
                        "deviation": round((max(hh) - min(hh)) / target, 4) if target else None})
    return grids, balance


# -- publish ---------------------------------------------------------------------------------
PUBLISH_LOCK = 5_000_005  # pg_advisory_xact_lock key shared by all publishers


def publish(conn: Connection, plan_id: int, expected_version: int | None = None,
            actor: str | None = None, description: str | None = None) -> dict:
    """Publish the draft as a new generation, in the caller's transaction (commit after)."""
    get_plan(conn, plan_id)  # through RLS: an invisible plan is a 404
    result = _publish(conn, plan_id, expected_version, description)
    _drop_temp(conn)
    return result


def _publish(conn: Connection, plan_id: int, expected_version: int | None,
             description: str | None) -> dict:
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PUBLISH_LOCK})
    current = current_generation(conn, lock=True)
    plan = _draft(conn, plan_id)
    if expected_version is not None and plan["version"] != expected_version:
        raise APIError(409, "plan_changed", f"plan {plan_id} is at version {plan['version']}, "
                                            f"not {expected_version}", field="version")
    if plan["base_generation_id"] != current:
        raise APIError(409, "stale_plan",
                       f"plan {plan_id} was drawn on generation {plan['base_generation_id']} "
                       f"but generation {current} has been published since; create a new "
                       "plan from the current generation", current_generation=current)
    stale = conn.execute(text("""
        SELECT pg.code FROM plan_grids pg JOIN grids g ON g.id = pg.base_grid_id
        WHERE pg.plan_id = :pid AND pg.status <> 'kept' AND g.valid_to IS NOT NULL LIMIT 5
    """), {"pid": plan_id}).scalars().all()
    if stale:
        raise APIError(409, "stale_plan", f"grids {stale} are no longer current")
    if not any(plan["grids"][s] for s in ("changed", "new", "removed")):
        raise APIError(409, "no_changes", f"plan {plan_id} changes nothing")
    report = validate_plan(conn, plan_id)
    blocking = v.blocking(report["problems"])
    if blocking:
        raise APIError(409, "invalid_plan", f"publishing plan {plan_id} would leave the "
                       f"hierarchy invalid ({len(blocking)} problems)", problems=blocking,
                       summary=v.summary(blocking))
    level = plan["level"]
    srid = v.metric_srid(conn)
    renamed = _final_codes(conn, plan_id, level, srid)
    _moves(conn, plan_id, level)  # before the grids change: old codes from current rows
    workers = _worker_moves(conn, plan_id, srid)
    gen = conn.execute(text(
        "INSERT INTO grid_generations (description) VALUES (:d) RETURNING id"),
        {"d": description or f"plan {plan_id}: {plan['name']}"}).scalar_one()
    p = {"pid": plan_id, "gen": gen, "srid": srid}
    closed = conn.execute(text("""
        UPDATE grids g SET valid_to = now() FROM plan_grids pg
        WHERE pg.plan_id = :pid AND pg.status IN ('changed', 'removed')
          AND g.id = pg.base_grid_id
        RETURNING g.id, g.code
    """), p).all()
    closed_ids = [r.id for r in closed]
    new_rows = conn.execute(text("""
        INSERT INTO grids (code, name, level, parent_id, geom, area_m2, target_households,
                           generation_id, valid_from)
        SELECT pg.code, CASE WHEN pg.name <> '' THEN pg.name
                             ELSE coalesce(b.name, '') END,
               pg.level, par.id, pg.geom, ST_Area(ST_Transform(pg.geom, :srid)),
               coalesce(pg.target_households, b.target_households,
                        (SELECT round(avg(s.target_households)) FROM grids s
                         WHERE s.parent_id = par.id AND s.valid_to IS NULL)),
               :gen, now()
        FROM plan_grids pg
        JOIN grids par ON par.code = pg.parent_code AND par.valid_to IS NULL
        LEFT JOIN grids b ON b.id = pg.base_grid_id
        WHERE pg.plan_id = :pid AND pg.status IN ('changed', 'new')
        RETURNING id, code
    """), p).all()
    new_ids = [r.id for r in new_rows]
    q = {**p, "closed": closed_ids, "new": new_ids}
    # Children of a redrawn community/street now hang under the new row.
    if level in CHILD_LEVEL:
        conn.execute(text("""
            UPDATE grids c SET parent_id = n.id
            FROM grids o, grids n
            WHERE c.parent_id = o.id AND o.id = ANY(:closed) AND c.valid_to IS NULL
              AND n.id = ANY(:new) AND n.code = o.code
        """), q)
    conn.execute(text("DELETE FROM grid_parts WHERE grid_id = ANY(:closed)"), q)
    conn.execute(text("INSERT INTO grid_parts (grid_id, level, geom) "
                      "SELECT id, level, ST_Subdivide(geom, 64) FROM grids "
                      "WHERE id = ANY(:new)"), q)
    counts = _rederive(conn, level, q)
    moved_workers, unassigned = _apply_worker_moves(conn, workers)
    retired = conn.execute(text("""
        INSERT INTO retired_codes (code, generation_id, plan_id)
        SELECT pg.code, :gen, :pid FROM plan_grids pg
        WHERE pg.plan_id = :pid AND pg.status = 'removed'
        ON CONFLICT (code) DO NOTHING RETURNING code
    """), p).scalars().all()
    conn.execute(text("""
        UPDATE plans SET status = 'published', published_generation_id = :gen,
               published_at = now(), version = version + 1 WHERE id = :pid
    """), p)
    return {"plan": plan_id, "generation_id": gen, "closed_grids": len(closed_ids),
            "new_grids": len(new_ids), "new_codes": renamed, "retired_codes": sorted(retired),
            "rederived": counts, "workers_moved": moved_workers,
            "workers_unassigned": unassigned,
            "published_at": conn.execute(text("SELECT now()")).scalar().isoformat()}


def _final_codes(conn: Connection, plan_id: int, level: str, srid: int) -> dict:
    """Renumber new grids west→east, north→south per parent (draft codes are provisional)."""
    rows = conn.execute(text("""
        SELECT code, parent_code, ST_AsBinary(geom) AS wkb FROM plan_grids
        WHERE plan_id = :pid AND status = 'new' ORDER BY parent_code, code
    """), {"pid": plan_id}).all()
    if not rows:
        return {}
    by_parent: dict[str, list] = {}
    for r in rows:
        by_parent.setdefault(r.parent_code, []).append(r)
    plan_codes = set(conn.execute(text(
        "SELECT code FROM plan_grids WHERE plan_id = :pid AND status <> 'new'"),
        {"pid": plan_id}).scalars())
    mapping = {}
    for parent, items in by_parent.items():
        metric = v.to_metric(shapely.from_wkb([r.wkb for r in items]), srid)
        fresh = codes_mod.assign(conn, level, parent, metric, plan_codes)
        plan_codes |= set(fresh)
        mapping.update({r.code: c for r, c in zip(items, fresh)})
    changes = {old: new for old, new in mapping.items() if old != new}
    if changes:
        # Two steps so that swapped codes never collide on the primary key.
        conn.execute(text("UPDATE plan_grids SET code = '9' || substr(code, 2) "
                          "WHERE plan_id = :pid AND code = ANY(:codes)"),
                     {"pid": plan_id, "codes": list(changes)})
        conn.execute(text("UPDATE plan_grids SET code = :new WHERE plan_id = :pid "
                          "AND code = '9' || substr(:old, 2)"),
                     [{"pid": plan_id, "old": o, "new": n} for o, n in changes.items()])
    return mapping


def _rederive(conn: Connection, level: str, q: dict) -> dict:
    """New grid ids for buildings, households, facilities and open incidents in the changed
    area (the ``_moves`` tables); closed incidents keep theirs."""
    if level == "unit":
        target = """(SELECT g.id FROM grid_parts p JOIN grids g ON g.id = p.grid_id
                      WHERE p.level = 'unit' AND ST_Intersects(p.geom, {pt})
                      ORDER BY g.code LIMIT 1)"""
    else:
        return {"buildings": 0, "households": 0, "facilities": 0, "open_incidents": 0}
    counts = {}
    counts["buildings"] = conn.execute(text(f"""
        UPDATE buildings b SET grid_id = {target.format(pt='b.anchor')}
        FROM _b_moves m WHERE b.id = m.id
    """), q).rowcount
    counts["households"] = conn.execute(text("""
        UPDATE households h SET grid_id = b.grid_id FROM _b_moves m JOIN buildings b
        ON b.id = m.id WHERE h.building_id = m.id AND h.grid_id IS DISTINCT FROM b.grid_id
    """), q).rowcount
    counts["facilities"] = conn.execute(text(f"""
        UPDATE facilities f SET grid_id = {target.format(pt='f.geom')}
        FROM _f_moves m WHERE f.id = m.id
    """), q).rowcount
    counts["open_incidents"] = conn.execute(text(f"""
        UPDATE incidents i SET grid_id = {target.format(pt='i.geom')}
        FROM _i_moves m WHERE i.id = m.id AND {OPEN_INCIDENT.format(i='i')}
    """), q).rowcount
    return counts


def _apply_worker_moves(conn: Connection, moves: list[dict]) -> tuple[list, list]:
    """Move retired codes' assignments (set-based); a moved responsible worker stays
    responsible only when the target grid has none yet (one responsible per grid)."""
    if not moves:
        return [], []
    seen_resp = set()
    rows = []
    for m in moves:
        resp = bool(m["is_responsible"]) and m["to"] is not None and m["to"] not in seen_resp
        if resp:
            seen_resp.add(m["to"])
        rows.append({"worker_id": m["worker_id"], "from_code": m["from"], "to_code": m["to"],
                     "resp": resp})
    payload = json.dumps(rows)
    conn.execute(text("""
        INSERT INTO worker_grids (worker_id, grid_code, is_responsible)
        SELECT m.worker_id, m.to_code, m.resp AND NOT EXISTS (
                   SELECT 1 FROM worker_grids x WHERE x.grid_code = m.to_code
                   AND x.is_responsible)
        FROM jsonb_to_recordset(CAST(:m AS jsonb))
             AS m(worker_id integer, from_code text, to_code text, resp boolean)
        WHERE m.to_code IS NOT NULL
        ON CONFLICT (worker_id, grid_code) DO NOTHING
    """), {"m": payload})
    conn.execute(text("""
        DELETE FROM worker_grids wg
        USING jsonb_to_recordset(CAST(:m AS jsonb))
              AS m(worker_id integer, from_code text, to_code text, resp boolean)
        WHERE wg.worker_id = m.worker_id AND wg.grid_code = m.from_code
    """), {"m": payload})
    moved = [{"worker_id": m["worker_id"], "role": m["role"], "from": m["from"], "to": m["to"]}
             for m in moves if m["to"]]
    unassigned = [{"worker_id": m["worker_id"], "role": m["role"], "from": m["from"]}
                  for m in moves if not m["to"]]
    return moved, unassigned


def discard(conn: Connection, plan_id: int) -> dict:
    _draft(conn, plan_id)
    conn.execute(text("UPDATE plans SET status = 'discarded', updated_at = now() "
                      "WHERE id = :id"), {"id": plan_id})
    return get_plan(conn, plan_id)

"""``gis-server grids``: import, validate and export grid layers; publish plans.

    gis-server grids validate FILE [--level unit]          # problems as JSON, exit 1 if any
    gis-server grids validate --current                    # the whole current hierarchy
    gis-server grids import FILE --level unit [--plan NAME]   # load a layer into a draft
    gis-server grids export --level unit --format geojson|gpkg|shp [--plan ID]
                            [--crs EPSG:4490] -o FILE
    gis-server grids assignments [--plan ID] -o FILE.csv   # building → grid CSV
    gis-server grids publish PLAN_ID                       # publish a draft (one transaction)

The command line runs as the database owner (no scope); every write is audited as ``cli``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlalchemy import text

from .core import gridio
from .core import plans as core
from .core import validation as v
from .core.accounts import Principal
from .core.audit import record
from .errors import APIError

CLI = Principal(user_id=None, username="cli", role=None)


def _engine():
    from .cli import _url
    from .db import engine_for
    return engine_for(_url())


def _fail(exc: APIError):
    click.echo(json.dumps(exc.to_dict(), ensure_ascii=False, indent=2), err=True)
    raise SystemExit(2)


@click.group()
def grids() -> None:
    """Grid layers: import, validate, export; plans: publish."""


@grids.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--level", type=click.Choice(["street", "community", "unit"]), default="unit",
              show_default=True)
@click.option("--current", is_flag=True, help="Validate the current hierarchy instead.")
def validate(path: str | None, level: str, current: bool) -> None:
    """Print {"problems": [...]} for FILE (parents: the current grids). Exit 1 on problems."""
    engine = _engine()
    try:
        with engine.connect() as conn:
            if current or not path:
                result = v.validate_hierarchy(conn)
            else:
                layer = gridio.read_layer(Path(path).read_bytes(), path)
                feats = layer["features"]
                for i, f in enumerate(feats):
                    f["code"] = f.get("code") or f"#{i}"
                parents = v.current_geoms(conn, {f["parent_code"] for f in feats})
                problems = v.validate_layer(feats, parents, v.metric_srid(conn),
                                            v.Settings.from_mapping(None, level))
                result = {"problems": problems, "summary": v.summary(problems),
                          "grids": len(feats), "crs": layer["crs"]}
    except APIError as exc:
        _fail(exc)
    click.echo(json.dumps(result, ensure_ascii=False, indent=2))
    sys.exit(1 if result["problems"] else 0)


@grids.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--level", type=click.Choice(["street", "community", "unit"]), required=True)
@click.option("--plan", "plan_name", default=None,
              help="Draft to load into (created from the current generation if missing; "
                   "default: the file name).")
@click.option("--keep-missing", is_flag=True,
              help="Grids of the plan missing from the file stay (default: removed).")
def import_(path: str, level: str, plan_name: str | None, keep_missing: bool) -> None:
    """Load a layer (GeoJSON, GeoPackage, zipped Shapefile; any declared CRS) into a draft."""
    name = plan_name or Path(path).stem
    try:
        layer = gridio.read_layer(Path(path).read_bytes(), path)
        with _engine().begin() as conn:
            plan_id = conn.execute(text(
                "SELECT id FROM plans WHERE name = :n AND status = 'draft' ORDER BY id DESC "
                "LIMIT 1"), {"n": name}).scalar()
            if plan_id is None:
                plan_id = core.create_plan(conn, name, level, actor="cli")["id"]
            elif core.get_plan(conn, plan_id)["level"] != level:
                raise APIError(400, "invalid_parameter", f"plan {name!r} is not a {level} "
                                                         "plan", field="level")
            plan = core.load_layer(conn, plan_id, layer["features"], actor="cli",
                                   remove_missing=not keep_missing)
            report = core.validate_plan(conn, plan_id)
            record(conn, CLI, "plan_import", "plan", plan_id,
                   detail={"file": Path(path).name, "crs": layer["crs"],
                           "features": len(layer["features"])})
    except APIError as exc:
        _fail(exc)
    click.echo(json.dumps({"plan": plan, "crs": layer["crs"], "summary": report["summary"],
                           "problems": report["problems"]}, ensure_ascii=False, indent=2,
                          default=str))


@grids.command("export")
@click.option("--level", type=click.Choice(["district", "street", "community", "unit"]),
              default="unit", show_default=True)
@click.option("--format", "fmt", type=click.Choice(sorted(gridio.FORMATS)), default="geojson",
              show_default=True)
@click.option("--plan", "plan_id", type=int, default=None)
@click.option("--crs", default=None, help="Output CRS, e.g. EPSG:4490 (default EPSG:4326).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def export(level: str, fmt: str, plan_id: int | None, crs: str | None, output: str) -> None:
    """Write the current grids (or a plan's) as GeoJSON, GeoPackage or zipped Shapefile."""
    try:
        with _engine().connect() as conn:
            if plan_id is not None:
                level = core.get_plan(conn, plan_id)["level"]
            frame = gridio.layer_frame(conn, level, plan_id)
        data, _, _ = gridio.write_layer(frame, fmt, crs=crs, name=Path(output).stem)
    except APIError as exc:
        _fail(exc)
    Path(output).write_bytes(data)
    click.echo(f"{len(frame)} grids → {output}")


@grids.command("assignments")
@click.option("--plan", "plan_id", type=int, default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def assignments(plan_id: int | None, output: str) -> None:
    """Write building_id,grid_code (current grids or a unit plan's)."""
    try:
        with _engine().connect() as conn:
            data = gridio.building_assignments_csv(conn, plan_id)
    except APIError as exc:
        _fail(exc)
    Path(output).write_text(data, encoding="utf-8")
    click.echo(f"{data.count(chr(10)) - 1} buildings → {output}")


@grids.command("publish")
@click.argument("plan_id", type=int)
def publish(plan_id: int) -> None:
    """Publish a draft as a new generation (refused with the problem list if invalid)."""
    try:
        with _engine().begin() as conn:
            result = core.publish(conn, plan_id, actor="cli")
            record(conn, CLI, "plan_publish", "plan", plan_id,
                   detail={"generation_id": result["generation_id"]})
    except APIError as exc:
        _fail(exc)
    click.echo(json.dumps(result, ensure_ascii=False, indent=2, default=str))

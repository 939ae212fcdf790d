"""Import and export of grid layers with pyogrio: GeoJSON, GeoPackage, zipped Shapefile.

Input may be in any CRS the file declares (CGCS2000 EPSG:4490, a projected CRS...); it is
transformed to EPSG:4326. A file without a CRS is read as EPSG:4326 (RFC 7946 GeoJSON).
Attribute names: ``code``, ``name``, ``parent_code`` (Shapefile: ``parent``/``parent_cod``),
``level``. Export writes the same formats (Shapefile zipped, attribute ``parent``) and a CSV
of each building's grid.
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError, bad_param

FORMATS = {
    "geojson": ("GeoJSON", ".geojson", "application/geo+json"),
    "gpkg": ("GPKG", ".gpkg", "application/geopackage+sqlite3"),
    "shp": ("ESRI Shapefile", ".zip", "application/zip"),
}
PARENT_ALIASES = ("parent_code", "parent_cod", "parent", "PARENT_CODE", "PARENT")


def detect_format(filename: str | None, data: bytes) -> str:
    name = (filename or "").lower()
    if name.endswith((".geojson", ".json")):
        return "geojson"
    if name.endswith(".gpkg") or data[:16].startswith(b"SQLite format 3"):
        return "gpkg"
    if name.endswith(".zip") or data[:4] == b"PK\x03\x04":
        return "shp"
    if data.lstrip()[:1] == b"{":
        return "geojson"
    raise bad_param("file", "unknown format: send GeoJSON (.geojson), GeoPackage (.gpkg) or a "
                            "zipped Shapefile (.zip)")


def read_layer(data: bytes, filename: str | None = None, layer: str | None = None) -> dict:
    """Features of a grid layer: ``{"features": [{code, name, parent_code, level, geometry}],
    "crs": "EPSG:xxxx"}`` with shapely geometries in EPSG:4326."""
    if not data:
        raise bad_param("file", "the file is empty")
    fmt = detect_format(filename, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("upload" + FORMATS[fmt][1])
        path.write_bytes(data)
        source = str(path)
        if fmt == "shp":
            try:
                with zipfile.ZipFile(path) as z:
                    shps = [n for n in z.namelist() if n.lower().endswith(".shp")]
            except zipfile.BadZipFile:
                raise bad_param("file", "not a valid zip file") from None
            if not shps:
                raise bad_param("file", "the zip holds no .shp file")
            source = f"/vsizip/{path}/{shps[0]}"
        try:
            frame = pyogrio.read_dataframe(source, layer=layer)
        except Exception as exc:  # GDAL's message names the problem
            raise bad_param("file", f"cannot read the {FORMATS[fmt][0]} file: {exc}") from None
    crs = frame.crs.to_string() if frame.crs is not None else "EPSG:4326 (assumed)"
    if frame.crs is None:
        frame = frame.set_crs(4326)
    elif frame.crs.to_epsg() != 4326:
        frame = frame.to_crs(4326)
    return {"features": _features(frame), "crs": crs, "format": fmt}


def _col(frame: pd.DataFrame, names) -> pd.Series | None:
    for n in names:
        if n in frame.columns:
            return frame[n]
    return None


def _clean(value):
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    s = str(value).strip()
    if s.endswith(".0") and s[:-2].isdigit():  # numeric columns in some files
        s = s[:-2]
    return s or None


def _features(frame: gpd.GeoDataFrame) -> list[dict]:
    codes = _col(frame, ("code", "CODE"))
    names = _col(frame, ("name", "NAME"))
    parents = _col(frame, PARENT_ALIASES)
    levels = _col(frame, ("level", "LEVEL"))
    out = []
    for i, geom in enumerate(frame.geometry.values):
        if geom is None or shapely.is_empty(geom):
            raise bad_param("file", f"feature {i} has no geometry")
        if shapely.get_type_id(geom) not in (3, 6):
            raise bad_param("file", f"feature {i} is a {geom.geom_type}: grids must be "
                                    "polygons")
        geom = shapely.force_2d(geom)
        out.append({"code": _clean(codes.iloc[i]) if codes is not None else None,
                    "name": _clean(names.iloc[i]) if names is not None else None,
                    "parent_code": _clean(parents.iloc[i]) if parents is not None else None,
                    "level": _clean(levels.iloc[i]) if levels is not None else None,
                    "geometry": geom})
    return out


def features_from_geojson(obj) -> list[dict]:
    """A GeoJSON FeatureCollection dict (request body) → features as :func:`read_layer`."""
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection" \
            or not isinstance(obj.get("features"), list):
        raise bad_param("features", "the body must be a GeoJSON FeatureCollection")
    data = json.dumps(obj).encode()
    return read_layer(data, "body.geojson")["features"]


def geometry_from_geojson(obj, field: str = "geometry"):
    """A GeoJSON geometry (or Feature) dict → a valid-typed shapely polygon (EPSG:4326)."""
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        obj = obj.get("geometry")
    if not isinstance(obj, dict) or obj.get("type") not in ("Polygon", "MultiPolygon"):
        raise bad_param(field, f"{field} must be a GeoJSON Polygon or MultiPolygon")
    try:
        geom = shapely.geometry.shape(obj)
    except Exception as exc:
        raise bad_param(field, f"{field} is not a readable geometry: {exc}") from None
    if geom.is_empty:
        raise bad_param(field, f"{field} is empty")
    return geom


# -- export ----------------------------------------------------------------------------------
def layer_frame(conn: Connection, level: str, plan_id: int | None = None,
                prefix: str = "") -> gpd.GeoDataFrame:
    if plan_id is None:
        sql = """SELECT g.code, g.name, g.level, p.code AS parent_code,
                        ST_AsBinary(g.geom) AS wkb
                 FROM grids g LEFT JOIN grids p ON p.id = g.parent_id
                 WHERE g.level = :level AND g.valid_to IS NULL AND starts_with(g.code, :prefix)
                 ORDER BY g.code"""
    else:
        sql = """SELECT code, name, level, parent_code, status, ST_AsBinary(geom) AS wkb
                 FROM plan_grids WHERE plan_id = :plan AND status <> 'removed'
                   AND starts_with(code, :prefix) ORDER BY code"""
    rows = conn.execute(text(sql), {"level": level, "plan": plan_id, "prefix": prefix}).all()
    frame = pd.DataFrame([dict(r._mapping) for r in rows])
    if frame.empty:
        return gpd.GeoDataFrame({"code": [], "name": [], "level": [], "parent_code": []},
                                geometry=gpd.GeoSeries([], crs=4326))
    geoms = shapely.from_wkb(frame.pop("wkb").values)
    return gpd.GeoDataFrame(frame, geometry=geoms, crs=4326)


def write_layer(frame: gpd.GeoDataFrame, fmt: str, crs: str | int | None = None,
                name: str = "grids") -> tuple[bytes, str, str]:
    """(bytes, mimetype, filename)."""
    if fmt not in FORMATS:
        raise bad_param("format", f"format must be one of {', '.join(FORMATS)}")
    driver, ext, mime = FORMATS[fmt]
    if crs is not None:
        try:
            frame = frame.to_crs(crs)
        except Exception as exc:
            raise bad_param("crs", f"unknown CRS {crs!r}: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "shp":
            frame = frame.rename(columns={"parent_code": "parent"})
            base = Path(tmp) / name
            base.mkdir()
            pyogrio.write_dataframe(frame, base / f"{name}.shp", driver=driver,
                                    encoding="UTF-8")
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for part in sorted(base.iterdir()):
                    z.write(part, part.name)
            return buf.getvalue(), mime, f"{name}.zip"
        path = Path(tmp) / f"{name}{ext}"
        kwargs = {"layer": name} if fmt == "gpkg" else {}
        pyogrio.write_dataframe(frame, path, driver=driver, **kwargs)
        return path.read_bytes(), mime, path.name


def building_assignments_csv(conn: Connection, plan_id: int | None = None,
                             prefix: str = "") -> str:
    """CSV ``building_id,grid_code`` — current grids, or the plan's unit grids (the same
    smallest-code rule on shared edges)."""
    if plan_id is None:
        rows = conn.execute(text("""
            SELECT b.id, u.code FROM buildings b LEFT JOIN grids u ON u.id = b.grid_id
            WHERE starts_with(coalesce(u.code, ''), :prefix) ORDER BY b.id
        """), {"prefix": prefix}).all()
    else:
        level = conn.execute(text("SELECT level FROM plans WHERE id = :p"),
                             {"p": plan_id}).scalar()
        if level != "unit":
            raise APIError(400, "invalid_parameter", "building assignments exist for unit-level "
                                                     "plans only", field="plan")
        rows = conn.execute(text("""
            SELECT b.id, (SELECT pg.code FROM plan_grids pg WHERE pg.plan_id = :p
                            AND pg.status <> 'removed' AND ST_Intersects(pg.geom, b.anchor)
                          ORDER BY pg.code LIMIT 1) AS code
            FROM buildings b ORDER BY b.id
        """), {"p": plan_id}).all()
        rows = [r for r in rows if (r.code or "").startswith(prefix)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["building_id", "grid_code"])
    w.writerows((r[0], r[1] or "") for r in rows)
    return buf.getvalue()

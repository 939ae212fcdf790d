"""OGC API – Features (Part 1 Core + GeoJSON + OpenAPI 3.0, Part 2 CRS by reference).

Framework-free, pygeoapi style: the web layer (``gis_server/web/ogc.py``) parses nothing but
the URL; this module validates the query parameters, runs one SQL statement per page and
returns plain values. Collections are declared in ``layers/*.toml`` (an ``[ogc]`` table next to
the layer's fields): the FROM clause with its joins, the paging key, the temporal property, the
properties that may be filtered, and the fields holding personal data.

Paging is keyset paging on the collection's key (``ORDER BY key`` then ``key > last``), carried
in an opaque ``cursor`` so that the 300th page costs what the first does; ``offset`` is also
accepted for generic clients. GeoJSON is assembled inside PostGIS.

Encodings of an items page: GeoJSON (default) and FlatGeobuf (``f=fgb``,
``application/flatgeobuf``, advertised as a second ``items`` link of the collection). A
FlatGeobuf page is the page's rows with WKB geometries (PostGIS builds no JSON text per
feature) written by GDAL from an Arrow table (``pyogrio.write_arrow``). PostGIS 3.3's
``ST_AsFlatGeobuf`` is not used: it writes corrupt features when a property is NULL. A client
reads the page with GDAL's C reader (``pyogrio.read_dataframe``) instead of parsing JSON in
Python; the page's ``numberMatched``/``numberReturned`` and links travel in the HTTP headers
``OGC-NumberMatched``, ``OGC-NumberReturned`` and ``Link`` (RFC 8288). FlatGeobuf date-times
carry milliseconds (GDAL's resolution); integers with NULLs read back as floats with NaN.

Per-feature aggregates (a building's households and residents) come from ``page_joins``
(a ``LEFT JOIN LATERAL`` in the collection's ``[ogc]`` table), joined to the rows of the page
only: the ``numberMatched`` count never evaluates them, and one lateral aggregate per feature
replaces one correlated subquery per aggregated property.

``numberMatched`` is a ``count(*)`` under row-level security, which evaluates the scope policy
on every row (~100 ms for 300,000 buildings, on every page). A collection may name an exact,
cheaper equivalent for unfiltered requests (``count_unfiltered``: buildings sum the
trigger-maintained ``building_density`` table, same policy, ~15 ms).
"""
from __future__ import annotations

import base64
import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import APIError, bad_param, not_found
from ..layers import Layer, all_layers, layers_dir

MAX_LIMIT = 50_000
DEFAULT_LIMIT = 100

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/{}"
# CRS URI → (SRID, axis order is lat/lon as the EPSG database defines it, GeoJSON decimals)
CRS: dict[str, tuple[int, bool, int]] = {
    CRS84: (4326, False, 7),
    EPSG.format(4326): (4326, True, 7),
    EPSG.format(3857): (3857, False, 2),
    EPSG.format(4490): (4490, True, 7),
}
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
]
GEOJSON = "application/geo+json"
JSON = "application/json"
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
FLATGEOBUF = "application/flatgeobuf"
FORMATS = {None, "", "json", "geojson", JSON, GEOJSON}
FGB_FORMATS = {"fgb", "flatgeobuf", FLATGEOBUF}
ITEMS_FORMATS = FORMATS | FGB_FORMATS

# SQL that masks a personal value (``masked`` mode), by kind; ``{}`` is the expression.
_MASKS = {
    "name": "CASE WHEN coalesce({0}, '') = '' THEN {0} "
            "ELSE left({0}, 1) || repeat('*', greatest(1, length({0}) - 1)) END",
    "phone": "CASE WHEN coalesce({0}, '') = '' THEN {0} "
             "WHEN length(regexp_replace({0}, '\\D', '', 'g')) < 7 "
             "THEN repeat('*', length(regexp_replace({0}, '\\D', '', 'g'))) "
             "ELSE left(regexp_replace({0}, '\\D', '', 'g'), 3) "
             "|| repeat('*', length(regexp_replace({0}, '\\D', '', 'g')) - 7) "
             "|| right(regexp_replace({0}, '\\D', '', 'g'), 4) END",
    "address": "CASE WHEN {0} IS NULL THEN NULL ELSE '***' END",
    "text": "CASE WHEN {0} IS NULL THEN NULL ELSE '***' END",
}
_OAS_TYPES = {"integer": "integer", "number": "number", "boolean": "boolean",
              "string": "string", "datetime": "string"}


@dataclass(frozen=True)
class Collection:
    id: str
    title: str
    description: str
    layer: Layer
    from_sql: str
    page_joins: str  # joined to a page's rows only (per-feature aggregates), not to counts
    count_unfiltered: str | None  # numberMatched without bbox/datetime/filters (exact, cheaper)
    key: tuple[str, ...]  # ORDER BY / keyset expressions
    key_types: tuple[str, ...]  # "integer" | "datetime" per key (cursor decoding)
    fid: str  # feature id expression (integer)
    fid_hint: str | None  # extra condition narrowing an item lookup (uses :fid)
    geom: str  # geometry expression (EPSG:4326)
    geometry_type: str
    where: tuple[str, ...] = ()  # always applied
    current: str | None = None  # applied when no datetime is given
    temporal: tuple[str, ...] = ()  # (instant,) or (start, end)
    filters: dict[str, str] = field(default_factory=dict)  # property → SQL expression
    types: dict[str, str] = field(default_factory=dict)  # property → OpenAPI type
    tile_fields: tuple[str, ...] = ()  # vector tiles: properties (empty: no tile layer)
    tile_minzoom: int = 0
    tile_geom: str | None = None  # stored EPSG:3857 geometry (indexed) for tiles, if any
    tile_density: str | None = None  # density table for tiles at zoom <= tile_density_maxzoom
    tile_density_maxzoom: int = -1
    extra_fields: tuple[dict, ...] = ()  # OGC-only properties ({name, label, sql})

    def fields(self, mode: str) -> list[tuple[str, str]]:
        """(name, SQL expression) of the properties a caller in ``mode`` receives."""
        out = []
        for f in self.layer.fields + self.extra_fields:
            expr = f.get("sql") or f"{self.layer.alias}.{f['name']}"
            kind = f.get("personal")
            if kind and mode == "removed":
                continue
            if kind and mode == "masked":
                expr = _MASKS[kind].format(f"({expr})")
            out.append((f["name"], expr))
        return out

    @property
    def page_field_names(self) -> set[str]:
        """Extra fields computed on a page's rows after ``page_joins`` (``page = true``)."""
        return {f["name"] for f in self.extra_fields if f.get("page")}

    @property
    def personal_fields(self) -> list[str]:
        return [f["name"] for f in self.layer.fields if f.get("personal")]


def _spec(path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=4)
def _collections(directory: str) -> dict[str, Collection]:
    layers = all_layers()
    out: dict[str, Collection] = {}
    for path in sorted(layers_dir().glob("*.toml")):
        spec = _spec(path)
        ogc = spec.get("ogc")
        if not ogc:
            continue
        layer = layers[spec["name"]]
        alias = layer.alias
        key = tuple(ogc.get("key", [f"{alias}.{layer.id}"]))
        base = dict(
            layer=layer, from_sql=ogc["from"], page_joins=ogc.get("page_joins", ""), key=key,
            count_unfiltered=ogc.get("count_unfiltered"),
            key_types=tuple(ogc.get("key_types", ["integer"] * len(key))),
            fid=ogc.get("fid", key[0]), fid_hint=ogc.get("fid_hint"), geom=f"{alias}.{layer.geometry}",
            geometry_type=layer.geometry_type, current=ogc.get("current"),
            temporal=tuple(ogc.get("temporal", [])),
            filters={name: next((f.get("sql") or f"{alias}.{f['name']}")
                                for f in layer.fields if f["name"] == name)
                     for name in ogc.get("filters", [])},
            types=ogc.get("types", {}),
            tile_fields=tuple(ogc.get("tile_fields", [])),
            tile_minzoom=int(ogc.get("tile_minzoom", 0)),
            tile_geom=ogc.get("tile_geom"),
            tile_density=ogc.get("tile_density"),
            tile_density_maxzoom=int(ogc.get("tile_density_maxzoom", -1)),
            extra_fields=tuple(ogc.get("extra_fields", [])),
        )
        where = tuple(ogc.get("where", []))
        split = ogc.get("split_by")
        if split:
            for value, title in ogc["split_values"].items():
                cid = f"{ogc.get('id', layer.name)}_{value}"
                out[cid] = Collection(
                    id=cid, title=f"{title}", description=ogc.get("description", layer.title),
                    where=where + (f"{split} = '{value}'",), **base)
        else:
            cid = ogc.get("id", layer.name)
            out[cid] = Collection(id=cid, title=ogc.get("title", layer.title),
                                  description=ogc.get("description", layer.title),
                                  where=where, **base)
    return out


def collections() -> dict[str, Collection]:
    return _collections(str(layers_dir()))


def get_collection(collection_id: str) -> Collection:
    found = collections().get(collection_id)
    if found is None:
        raise not_found("collection", collection_id)
    return found


# --- parameters ---------------------------------------------------------------------------

COMMON_PARAMS = {"f"}
ITEMS_PARAMS = {"f", "limit", "bbox", "bbox-crs", "crs", "datetime", "cursor", "offset"}
ITEM_PARAMS = {"f", "crs"}


def check_params(args, allowed: set[str], formats: set | None = None) -> None:
    """/req/core/query-param-unknown: an unknown parameter is a 400 naming it."""
    for name in args.keys():
        if name not in allowed:
            raise APIError(400, "invalid_parameter", f"unknown query parameter {name!r}; "
                           f"allowed: {', '.join(sorted(allowed))}", field=name)
    fmt = args.get("f")
    if fmt not in (formats or FORMATS):
        offered = "json or fgb" if formats and FGB_FORMATS <= formats else \
            "json (the only encoding offered here)"
        raise bad_param("f", f"f must be {offered}, got {fmt!r}")


def is_fgb(args) -> bool:
    return args.get("f") in FGB_FORMATS


def parse_crs(value: str | None, field_name: str = "crs") -> str:
    if value in (None, ""):
        return CRS84
    value = value.strip().strip("<>")
    aliases = {"EPSG:4326": EPSG.format(4326), "EPSG:3857": EPSG.format(3857),
               "EPSG:4490": EPSG.format(4490), "OGC:CRS84": CRS84, "CRS84": CRS84,
               "[OGC:CRS84]": CRS84}
    value = aliases.get(value.upper(), value)
    if value not in CRS:
        raise bad_param(field_name, f"{field_name} must be one of {', '.join(CRS)}, "
                                    f"got {value!r}")
    return value


def parse_limit(value) -> int:
    """limit: an integer ≥ 1; above :data:`MAX_LIMIT` it is clamped (not refused)."""
    if value in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise bad_param("limit", f"limit must be an integer, got {value!r}") from None
    if limit < 1:
        raise bad_param("limit", f"limit must be at least 1, got {limit}")
    return min(limit, MAX_LIMIT)


def parse_bbox(value: str, bbox_crs: str) -> tuple[float, float, float, float]:
    """bbox in ``bbox_crs`` axis order → (minx, miny, maxx, maxy) in that CRS's x/y order."""
    parts = value.split(",")
    if len(parts) not in (4, 6):
        raise bad_param("bbox", "bbox must have 4 (or 6) comma-separated numbers")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise bad_param("bbox", f"bbox must be numbers, got {value!r}") from None
    if not all(math.isfinite(n) for n in nums):
        raise bad_param("bbox", "bbox must be finite numbers")
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    srid, lat_lon, _ = CRS[bbox_crs]
    a1, a2, b1, b2 = nums
    minx, miny, maxx, maxy = (a2, a1, b2, b1) if lat_lon else (a1, a2, b1, b2)
    if srid != 3857 and not (-180 <= minx <= 180 and -180 <= maxx <= 180
                             and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise bad_param("bbox", "bbox is outside longitude/latitude ranges (check the axis "
                                "order of bbox-crs: EPSG:4326 and EPSG:4490 are lat,lon)")
    if minx > maxx or miny > maxy:
        raise bad_param("bbox", "bbox lower corner must not exceed the upper corner")
    return minx, miny, maxx, maxy


def _instant(value: str, field_name: str = "datetime") -> datetime | None:
    if value in ("..", ""):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_param(field_name, f"{field_name} must be an RFC 3339 date-time or an "
                                    f"interval start/end (.. open), got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_datetime(value: str) -> tuple[datetime | None, datetime | None, bool]:
    """``instant`` or ``start/end`` (either end may be ``..`` or empty) → (start, end, is_interval)."""
    if "/" in value:
        start_s, _, end_s = value.partition("/")
        start, end = _instant(start_s), _instant(end_s)
        if start and end and start > end:
            raise bad_param("datetime", "datetime interval start must not be after its end")
        return start, end, True
    at = _instant(value)
    if at is None:
        raise bad_param("datetime", "datetime instant must not be '..'")
    return at, at, False


def encode_cursor(values: list) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values],
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(value: str, coll: Collection) -> list:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        values = json.loads(raw)
        assert isinstance(values, list) and len(values) == len(coll.key)
        out = []
        for v, kind in zip(values, coll.key_types):
            if kind == "integer":
                assert isinstance(v, int) and not isinstance(v, bool)
                out.append(v)
            else:
                out.append(datetime.fromisoformat(v))
        return out
    except Exception:
        raise bad_param("cursor", "cursor is not one this server issued (follow the "
                                  "'next' link)") from None


# --- queries ------------------------------------------------------------------------------

def _geom_sql(coll: Collection, crs: str) -> str:
    srid, lat_lon, _ = CRS[crs]
    expr = coll.geom if srid == 4326 else f"ST_Transform({coll.geom}, {srid})"
    return f"ST_FlipCoordinates({expr})" if lat_lon else expr


def _properties_sql(fields: list[tuple[str, str]]) -> str:
    return "json_build_object(" + ", ".join(f"'{name}', q.{name}" for name, _ in fields) + ")"


@dataclass
class ItemsQuery:
    limit: int = DEFAULT_LIMIT
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = CRS84
    crs: str = CRS84
    datetime: tuple[datetime | None, datetime | None, bool] | None = None
    filters: dict[str, list[str]] = field(default_factory=dict)
    cursor: list | None = None
    offset: int = 0
    fgb: bool = False  # FlatGeobuf instead of GeoJSON


def parse_items_query(coll: Collection, args) -> ItemsQuery:
    check_params(args, ITEMS_PARAMS | set(coll.filters), ITEMS_FORMATS)
    q = ItemsQuery(limit=parse_limit(args.get("limit")),
                   crs=parse_crs(args.get("crs")),
                   bbox_crs=parse_crs(args.get("bbox-crs"), "bbox-crs"), fgb=is_fgb(args))
    if args.get("bbox-crs") and not args.get("bbox"):
        raise bad_param("bbox-crs", "bbox-crs needs a bbox")
    if args.get("bbox"):
        q.bbox = parse_bbox(args["bbox"], q.bbox_crs)
    if args.get("datetime"):
        if not coll.temporal:
            raise bad_param("datetime", f"collection {coll.id} has no temporal property")
        q.datetime = parse_datetime(args["datetime"])
    for name in coll.filters:
        values = args.getlist(name) if hasattr(args, "getlist") else [args[name]]
        values = [v for value in values for v in str(value).split(",") if value is not None]
        if name in args:
            if not values or any(v == "" for v in values):
                raise bad_param(name, f"{name} must not be empty")
            q.filters[name] = values
    if args.get("cursor") and args.get("offset"):
        raise bad_param("offset", "use either cursor (from a next link) or offset")
    if args.get("cursor"):
        q.cursor = decode_cursor(args["cursor"], coll)
    if args.get("offset"):
        try:
            q.offset = int(args["offset"])
        except ValueError:
            raise bad_param("offset", f"offset must be an integer, got {args['offset']!r}") \
                from None
        if q.offset < 0:
            raise bad_param("offset", "offset must not be negative")
    return q


def _where(coll: Collection, q: ItemsQuery, params: dict) -> list[str]:
    where = list(coll.where)
    if q.datetime is None:
        if coll.current:
            where.append(coll.current)
    else:
        start, end, _ = q.datetime
        if len(coll.temporal) == 1:
            col = coll.temporal[0]
            if start is not None:
                where.append(f"{col} >= :dt_start")
                params["dt_start"] = start
            if end is not None:
                where.append(f"{col} <= :dt_end")
                params["dt_end"] = end
        else:  # a validity interval [from, to) intersecting the requested one
            lo, hi = coll.temporal
            if end is not None:
                where.append(f"{lo} <= :dt_end")
                params["dt_end"] = end
            if start is not None:
                where.append(f"({hi} IS NULL OR {hi} > :dt_start)")
                params["dt_start"] = start
    if q.bbox is not None:
        srid = CRS[q.bbox_crs][0]
        env = "ST_MakeEnvelope(:bx0, :by0, :bx1, :by1, 4326)" if srid == 4326 else \
            f"ST_Transform(ST_MakeEnvelope(:bx0, :by0, :bx1, :by1, {srid}), 4326)"
        where.append(f"ST_Intersects({coll.geom}, {env})")
        params.update(bx0=q.bbox[0], by0=q.bbox[1], bx1=q.bbox[2], by1=q.bbox[3])
    for i, (name, values) in enumerate(q.filters.items()):
        expr = coll.filters[name]
        kind = coll.types.get(name, "string")
        if kind == "boolean":
            conv = []
            for v in values:
                if v.lower() not in ("true", "false"):
                    raise bad_param(name, f"{name} must be true or false, got {v!r}")
                conv.append(v.lower() == "true")
            values = conv
        elif kind == "integer":
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise bad_param(name, f"{name} must be integers, got {values!r}") from None
        where.append(f"{expr} = ANY(:f{i})")
        params[f"f{i}"] = values
    return where


def _split_fields(coll: Collection, mode: str) -> tuple[list, list]:
    """(fields computed on the base rows, fields computed after ``page_joins``)."""
    page_names = coll.page_field_names
    fields = coll.fields(mode)
    return ([f for f in fields if f[0] not in page_names],
            [f for f in fields if f[0] in page_names])


def _page_sql(coll: Collection, mode: str, page_where: list[str], crs: str, limit_sql: str,
              offset: int = 0) -> tuple[str, list[tuple[str, str]]]:
    """``WITH q (the page's rows), n (+ page_joins, row numbers)`` and the fields in order."""
    base, page = _split_fields(coll, mode)
    select = ", ".join([f"{expr} AS {name}" for name, expr in base]
                       + [f"{coll.fid} AS __fid"]
                       + [f"{k} AS __k{i}" for i, k in enumerate(coll.key)]
                       + [f"{_geom_sql(coll, crs)} AS __geom"])
    order = ", ".join(f"__k{i}" for i in range(len(coll.key)))
    page_select = "".join(f", {expr} AS {name}" for name, expr in page)
    sql = f"""
        WITH q AS (
            SELECT {select}
            FROM {coll.from_sql} WHERE {' AND '.join(page_where) or 'TRUE'}
            ORDER BY {', '.join(coll.key)} {limit_sql} OFFSET {int(offset)}
        ), n AS (
            SELECT q.*{page_select}, row_number() OVER (ORDER BY {order}) AS __rn
            FROM q {coll.page_joins}
        )"""
    return sql, coll.fields(mode)


# Column types written as they are (type OID → Arrow type name); other types are cast in SQL
# (numeric to float8, anything else to text), so every FlatGeobuf column has a plain type.
_ARROW_TYPES = {25: "string", 21: "int64", 23: "int64", 20: "int64", 700: "float64",
                701: "float64", 16: "bool", 1184: "timestamp_utc"}
_CASTS = {1700: ("float8", "float64")}
_column_types: dict[tuple[str, str], dict[str, int]] = {}


def _types(conn: Connection, coll: Collection, mode: str) -> dict[str, int]:
    """Type OIDs of the collection's fields (a LIMIT 0 probe, cached per collection and mode)."""
    key = (coll.id, mode)
    if key not in _column_types:
        head, fields = _page_sql(coll, mode, list(coll.where), CRS84, "LIMIT 0")
        cols = ", ".join(f"q.{name}" for name, _ in fields) or "1"
        result = conn.execute(text(f"{head} SELECT {cols} FROM n q LIMIT 0"))
        _column_types[key] = {name: col.type_code
                              for (name, _), col in zip(fields, result.cursor.description)}
    return _column_types[key]


def _fgb_columns(conn: Connection, coll: Collection, mode: str) -> tuple[str, dict[str, str]]:
    """SQL select list of a FlatGeobuf page's properties and their Arrow types."""
    cols, types = [], {}
    for name, oid in _types(conn, coll, mode).items():
        if oid in _ARROW_TYPES:
            cols.append(f"q.{name}")
            types[name] = _ARROW_TYPES[oid]
        else:
            cast, arrow = _CASTS.get(oid, ("text", "string"))
            cols.append(f"q.{name}::{cast} AS {name}")
            types[name] = arrow
    return ", ".join(cols), types


def _fgb_bytes(coll: Collection, rows: list, types: dict[str, str], crs: str) -> bytes:
    """FlatGeobuf written by GDAL from an Arrow table (properties, ``fid``, WKB geometry); no
    spatial index, so the features stay in the page's key order."""
    import pyarrow as pa
    import pyogrio

    arrow = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_(), "timestamp_utc": pa.timestamp("us", tz="UTC")}
    names = list(types) + ["fid", "geometry"]
    kinds = [arrow[t] for t in types.values()] + [pa.int64(), pa.binary()]
    columns = list(zip(*rows)) if rows else [[] for _ in names]
    table = pa.Table.from_arrays([pa.array(c, type=k) for c, k in zip(columns, kinds)],
                                 names=names)
    buf = io.BytesIO()
    pyogrio.write_arrow(table, buf, driver="FlatGeobuf", layer=coll.id,
                        geometry_name="geometry", geometry_type=coll.geometry_type,
                        crs=f"EPSG:{CRS[crs][0]}", SPATIAL_INDEX="NO")
    return buf.getvalue()


def items(conn: Connection, coll: Collection, q: ItemsQuery, mode: str) -> dict:
    """One page: ``features_json`` (text of the JSON array) or ``features_fgb`` (FlatGeobuf
    bytes, ``q.fgb``), counts and the next cursor."""
    params: dict = {"limit": q.limit, "limit1": q.limit + 1}
    where = _where(coll, q, params)
    from_where = f"FROM {coll.from_sql} WHERE {' AND '.join(where) or 'TRUE'}"
    page_where = list(where)
    if q.cursor is not None:
        keys = ", ".join(coll.key)
        marks = ", ".join(f":c{i}" for i in range(len(coll.key)))
        page_where.append(f"({keys}) > ({marks})")
        params.update({f"c{i}": v for i, v in enumerate(q.cursor)})
    head, fields = _page_sql(coll, mode, page_where, q.crs, "LIMIT :limit1", q.offset)
    decimals = CRS[q.crs][2]
    key_list = ", ".join(f"q.__k{i}" for i in range(len(coll.key)))
    fgb = None
    if q.fgb:
        # Rows (attributes + WKB) in key order; GDAL writes the file.
        select, dtypes = _fgb_columns(conn, coll, mode)
        rows = conn.execute(text(f"""{head}
            SELECT {select}, q.__fid AS fid, ST_AsBinary(q.__geom) AS __wkb, {key_list}
            FROM n q ORDER BY q.__rn"""), params).all()
        nkeys = len(coll.key)
        page_rows = [tuple(r[:-nkeys]) for r in rows[:q.limit]]
        fgb = _fgb_bytes(coll, page_rows, dtypes, q.crs)
        returned, fetched = len(page_rows), len(rows)
        last_keys = list(rows[returned - 1][-nkeys:]) if returned else None
    else:
        sql = f"""{head}
            SELECT coalesce(json_agg(json_build_object(
                       'type', 'Feature', 'id', q.__fid,
                       'geometry', ST_AsGeoJSON(q.__geom, {decimals})::json,
                       'properties', {_properties_sql(fields)}) ORDER BY q.__rn)
                       FILTER (WHERE q.__rn <= :limit), '[]')::text AS features,
                   count(*) FILTER (WHERE q.__rn <= :limit) AS returned,
                   count(*) AS fetched,
                   array_agg(json_build_array({key_list})
                             ORDER BY q.__rn DESC) FILTER (WHERE q.__rn <= :limit) AS keys
            FROM n q
        """
        row = conn.execute(text(sql), params).one()
        returned, fetched = row.returned, row.fetched
        last_keys = row.keys[0] if row.keys else None
    if coll.count_unfiltered and q.bbox is None and q.datetime is None and not q.filters:
        matched = conn.execute(text(coll.count_unfiltered)).scalar_one()
    else:
        matched = conn.execute(text(f"SELECT count(*) {from_where}"),
                               {k: v for k, v in params.items() if not k.startswith("c")}
                               ).scalar_one()
    next_cursor = None
    if fetched > returned and last_keys is not None:
        last = last_keys
        if isinstance(last, str):
            last = json.loads(last)
        next_cursor = encode_cursor(last)
    page = {"numberReturned": returned,
            "numberMatched": matched, "next_cursor": next_cursor,
            "timeStamp": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z")}
    if q.fgb:
        page["features_fgb"] = fgb
    else:
        page["features_json"] = row.features
    return page


def item(conn: Connection, coll: Collection, fid: str, crs: str, mode: str) -> str:
    """One feature as GeoJSON text (404 when absent or outside the caller's scope)."""
    try:
        fid_value = int(fid)
    except ValueError:
        raise not_found(f"feature in {coll.id}", fid) from None
    where = list(coll.where) + [f"{coll.fid} = :fid"]
    if coll.fid_hint:
        where.append(coll.fid_hint)
    head, fields = _page_sql(coll, mode, where, crs, "")
    sql = f"""{head}
        SELECT json_build_object('type', 'Feature', 'id', q.__fid,
                   'geometry', ST_AsGeoJSON(q.__geom, {CRS[crs][2]})::json,
                   'properties', {_properties_sql(fields)})::text
        FROM n q
    """
    found = conn.execute(text(sql), {"fid": fid_value}).scalar()
    if found is None:
        raise not_found(f"feature in {coll.id}", fid)
    return found


def city_extent(conn: Connection) -> list[float] | None:
    """The city's bounding box (lon/lat): every collection lies inside it."""
    row = conn.execute(text("""
        SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
        FROM (SELECT ST_Extent(geom) AS e FROM grids
              WHERE level = 'district' AND valid_to IS NULL) s
    """)).one()
    return None if row[0] is None else [round(v, 7) for v in row]


# --- documents ----------------------------------------------------------------------------

def landing_page(base: str) -> dict:
    return {
        "title": "gis-server OGC API – Features",
        "description": "Grids, buildings, facilities, incidents and workers' latest positions "
                       "of the community grid management system, scoped to the caller and "
                       "de-identified for analysts.",
        "links": [
            {"href": f"{base}/", "rel": "self", "type": JSON, "title": "This document"},
            {"href": f"{base}/api", "rel": "service-desc", "type": OPENAPI,
             "title": "The API definition (OpenAPI 3.0)"},
            {"href": f"{base}/conformance", "rel": "conformance", "type": JSON,
             "title": "Conformance classes"},
            {"href": f"{base}/collections", "rel": "data", "type": JSON,
             "title": "Feature collections"},
        ],
    }


def conformance() -> dict:
    return {"conformsTo": CONFORMANCE}


def collection_doc(coll: Collection, base: str, extent: list[float] | None) -> dict:
    href = f"{base}/collections/{coll.id}"
    doc = {
        "id": coll.id, "title": coll.title, "description": coll.description,
        "links": [
            {"href": href, "rel": "self", "type": JSON, "title": "This collection"},
            {"href": f"{href}/items", "rel": "items", "type": GEOJSON,
             "title": f"{coll.title} (GeoJSON)"},
            {"href": f"{href}/items?f=fgb", "rel": "items", "type": FLATGEOBUF,
             "title": f"{coll.title} (FlatGeobuf)"},
        ],
        "itemType": "feature",
        "crs": list(CRS),
        "storageCrs": CRS84,
    }
    if extent:
        doc["extent"] = {"spatial": {"bbox": [extent], "crs": CRS84}}
    return doc


def collections_doc(base: str, extent: list[float] | None) -> dict:
    return {
        "links": [{"href": f"{base}/collections", "rel": "self", "type": JSON,
                   "title": "This document"}],
        "collections": [collection_doc(c, base, extent) for c in collections().values()],
        "crs": list(CRS),
    }


def openapi(base: str) -> dict:
    """OpenAPI 3.0 document generated from the collections (one path per collection)."""
    def param(name, desc, schema, style=None, explode=None):
        p = {"name": name, "in": "query", "required": False, "description": desc,
             "schema": schema}
        if style:
            p["style"], p["explode"] = style, explode
        return p

    common = {
        "f": param("f", "Encoding (json only).", {"type": "string", "enum": ["json"]}),
        "f_items": param("f", "Encoding: json (GeoJSON, default) or fgb (FlatGeobuf; counts "
                              "and links in the OGC-NumberMatched, OGC-NumberReturned and "
                              "Link headers).", {"type": "string", "enum": ["json", "fgb"]}),
        "limit": param("limit", f"Features per page; values above {MAX_LIMIT} are clamped.",
                       {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT}, "form", False),
        "bbox": param("bbox", "minx,miny,maxx,maxy in bbox-crs axis order (CRS84: lon,lat).",
                      {"type": "array", "minItems": 4, "maxItems": 6,
                       "items": {"type": "number"}}, "form", False),
        "bbox-crs": param("bbox-crs", "CRS of bbox.", {"type": "string", "format": "uri",
                                                       "enum": list(CRS)}, "form", False),
        "crs": param("crs", "CRS of the response geometries.",
                     {"type": "string", "format": "uri", "enum": list(CRS)}, "form", False),
        "datetime": param("datetime", "Instant or interval (start/end, '..' open).",
                          {"type": "string"}, "form", False),
        "cursor": param("cursor", "Opaque paging cursor (follow the next link).",
                        {"type": "string"}),
        "offset": param("offset", "Features to skip (prefer the next link).",
                        {"type": "integer", "minimum": 0}),
    }
    fc_response = {"200": {"description": "Features",
                           "content": {GEOJSON: {"schema": {"type": "object"}},
                                       FLATGEOBUF: {"schema": {"type": "string",
                                                               "format": "binary"}}}},
                   "400": {"description": "Invalid or unknown query parameter"}}
    paths = {
        "/": {"get": {"operationId": "getLandingPage", "summary": "Landing page",
                      "parameters": [common["f"]],
                      "responses": {"200": {"description": "Landing page",
                                            "content": {JSON: {}}}}}},
        "/conformance": {"get": {"operationId": "getConformance", "summary": "Conformance",
                                 "parameters": [common["f"]],
                                 "responses": {"200": {"description": "Conformance classes",
                                                       "content": {JSON: {}}}}}},
        "/collections": {"get": {"operationId": "getCollections", "summary": "Collections",
                                 "parameters": [common["f"]],
                                 "responses": {"200": {"description": "Collections",
                                                       "content": {JSON: {}}}}}},
    }
    for coll in collections().values():
        filters = [param(name, f"Equality filter on {name} (comma-separated values: any of).",
                         {"type": _OAS_TYPES.get(coll.types.get(name, "string"), "string")},
                         "form", False) for name in coll.filters]
        item_params = [common[n] for n in ("f_items", "limit", "bbox", "bbox-crs", "crs")]
        if coll.temporal:
            item_params.append(common["datetime"])
        paths[f"/collections/{coll.id}"] = {"get": {
            "operationId": f"describe_{coll.id}", "summary": coll.title,
            "parameters": [common["f"]],
            "responses": {"200": {"description": "Collection", "content": {JSON: {}}}}}}
        paths[f"/collections/{coll.id}/items"] = {"get": {
            "operationId": f"items_{coll.id}", "summary": f"{coll.title}: features",
            "parameters": item_params + [common["cursor"], common["offset"]] + filters,
            "responses": fc_response}}
        paths[f"/collections/{coll.id}/items/{{featureId}}"] = {"get": {
            "operationId": f"item_{coll.id}", "summary": f"{coll.title}: one feature",
            "parameters": [{"name": "featureId", "in": "path", "required": True,
                            "schema": {"type": "string"}}, common["f"], common["crs"]],
            "responses": {"200": {"description": "Feature",
                                  "content": {GEOJSON: {}}},
                          "404": {"description": "No such feature (or outside your scope)"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "gis-server OGC API – Features", "version": "1.0.0",
                 "description": "Bearer token required (Authorization: Bearer <token>)."},
        "servers": [{"url": base}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }

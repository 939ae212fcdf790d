"""Mapbox Vector Tiles built in PostGIS (``ST_AsMVT`` / ``ST_AsMVTGeom`` / ``ST_TileEnvelope``).

Tile layers are the OGC collections that declare ``tile_fields`` in ``layers/*.toml`` (the big
ones: buildings, unit grids, ...). A tile is one SQL statement. Below a layer's
``tile_minzoom`` the tile is empty. The ETag is a hash of the bytes, so a client revalidates
with ``If-None-Match``.

Zoom-dependent representation (as Tippecanoe/Martin tile sets do):

* **Features** (``zoom > tile_density_maxzoom``, or layers without a density table): features
  whose geometry meets the tile (plus a 64-unit margin) with their ``tile_fields``, simplified
  below :data:`SIMPLIFY_BELOW` with a tolerance of about a pixel, clipped and quantised to 4096
  units. A layer may name a stored EPSG:3857 geometry (``tile_geom``, e.g. the generated column
  ``buildings.geom_3857`` with its own GiST index, migration 0008) so that a tile neither
  transforms every geometry per request nor filters through a transformed envelope.
* **Density** (``tile_minzoom <= zoom <= tile_density_maxzoom``, buildings: z12–z14): the
  synthetic city holds ~10,000 buildings/km², ~35,000 per z14 tile — encoding them takes
  hundreds of milliseconds and draws a solid smear. These tiles carry instead one Point per
  cell of :data:`DENSITY_CELL` × :data:`DENSITY_CELL` tile units (the cell's centre) with the
  property ``count`` = buildings whose anchor lies in the cell. Counts come from the table
  ``building_density`` (per ~38 m cell and unit grid, kept exact by triggers, row-level
  security like ``buildings``), so they add up to the buildings of the tile the caller may see.
  The map page (``/maps/tiles``) draws them as circles sized by ``count``.
"""
from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import bad_param, not_found
from .ogc import Collection, collections

EXTENT = 4096
BUFFER = 64
MAX_ZOOM = 22
SIMPLIFY_BELOW = 15
WORLD_M = 40075016.68557849  # Web Mercator world width in metres
DENSITY_CELL = 64  # tile units per density cell side (4 pixels of a 256-pixel tile)
DENSITY_BASE_ZOOM = 14  # building_density cells are DENSITY_CELL units at this zoom
DENSITY_CELL_M = WORLD_M / (1 << DENSITY_BASE_ZOOM) / DENSITY_CELL  # ≈ 38.2 m


def tile_layers() -> dict[str, Collection]:
    return {cid: c for cid, c in collections().items() if c.tile_fields}


def get_tile_layer(name: str) -> Collection:
    found = tile_layers().get(name)
    if found is None:
        raise not_found("tile layer", name)
    return found


def check_tile(z: int, x: int, y: int) -> None:
    if not 0 <= z <= MAX_ZOOM:
        raise bad_param("z", f"z must be between 0 and {MAX_ZOOM}, got {z}")
    n = 1 << z
    if not 0 <= x < n:
        raise bad_param("x", f"x must be between 0 and {n - 1} at zoom {z}, got {x}")
    if not 0 <= y < n:
        raise bad_param("y", f"y must be between 0 and {n - 1} at zoom {z}, got {y}")


def tile(conn: Connection, layer: Collection, z: int, x: int, y: int, mode: str) -> bytes:
    """The MVT bytes of one tile (possibly empty) for a caller whose personal mode is ``mode``."""
    check_tile(z, x, y)
    if z < layer.tile_minzoom:
        return b""
    if layer.tile_density and z <= layer.tile_density_maxzoom:
        return density_tile(conn, layer, z, x, y)
    allowed = dict(layer.fields(mode))
    props = [(name, allowed[name]) for name in layer.tile_fields if name in allowed]
    select = ", ".join(f"({expr}) AS {name}" for name, expr in props)
    pixel_m = WORLD_M / ((1 << z) * EXTENT)
    geom = layer.tile_geom or f"ST_Transform({layer.geom}, 3857)"
    if z < SIMPLIFY_BELOW and layer.geometry_type != "Point":
        geom = f"ST_Simplify({geom}, {pixel_m:.6f}, true)"
    where = list(layer.where)
    if layer.current:
        where.append(layer.current)
    if layer.tile_geom:
        where.append(f"{layer.tile_geom} && ST_TileEnvelope(:z, :x, :y, "
                     f"margin => {BUFFER / EXTENT})")
    else:
        where.append(f"{layer.geom} && ST_Transform(ST_TileEnvelope(:z, :x, :y, "
                     f"margin => {BUFFER / EXTENT}), 4326)")
    sql = f"""
        SELECT ST_AsMVT(t, :name, {EXTENT}, 'geom', 'fid')
        FROM (
            SELECT {select}{',' if select else ''} ({layer.fid})::bigint AS fid,
                   ST_AsMVTGeom({geom}, ST_TileEnvelope(:z, :x, :y), {EXTENT}, {BUFFER}, true)
                       AS geom
            FROM {layer.from_sql}
            WHERE {' AND '.join(where)}
        ) t
        WHERE t.geom IS NOT NULL
    """
    data = conn.execute(text(sql), {"z": z, "x": x, "y": y, "name": layer.id}).scalar()
    return bytes(data or b"")


def density_tile(conn: Connection, layer: Collection, z: int, x: int, y: int) -> bytes:
    """Points with a ``count``: the layer's density cells merged to DENSITY_CELL units at ``z``.

    Base cells (zoom :data:`DENSITY_BASE_ZOOM`) are aligned on the Web Mercator tile grid, so a
    cell at zoom z is exactly 2^(14-z) × 2^(14-z) base cells and never straddles a tile edge:
    the counts of a tile add up to the buildings whose anchor lies in it.
    """
    shift = DENSITY_BASE_ZOOM - z
    if shift < 0:
        raise ValueError(f"density tiles exist up to zoom {DENSITY_BASE_ZOOM}, not {z}")
    cell_m = DENSITY_CELL_M * (1 << shift)
    half = WORLD_M / 2
    sql = f"""
        SELECT ST_AsMVT(t, :name, {EXTENT}, 'geom')
        FROM (
            SELECT sum(d.n)::integer AS count,
                   ST_AsMVTGeom(ST_Point((d.cx + 0.5) * {cell_m!r} - {half!r},
                                         {half!r} - (d.cy + 0.5) * {cell_m!r}, 3857),
                                ST_TileEnvelope(:z, :x, :y), {EXTENT}, 0, true) AS geom
            FROM (SELECT cx >> {shift} AS cx, cy >> {shift} AS cy, n
                  FROM {layer.tile_density}
                  WHERE geom && ST_TileEnvelope(:z, :x, :y)) d
            GROUP BY d.cx, d.cy
            ORDER BY d.cy, d.cx
        ) t
        WHERE t.geom IS NOT NULL
    """
    data = conn.execute(text(sql), {"z": z, "x": x, "y": y, "name": layer.id}).scalar()
    return bytes(data or b"")


def etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'

"""Buildings: bbox queries as GeoJSON and the building → household → member drill-down."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import not_found
from ..layers import get as get_layer
from .features import feature_collection, single_feature
from .privacy import apply_personal_mode

MAX_BBOX_FEATURES = 10_000


def _select(where: str) -> str:
    layer = get_layer("buildings")
    return f"""
        SELECT {layer.select_list()},
               (SELECT count(*) FROM households h WHERE h.building_id = b.id) AS household_count,
               b.geom
        FROM buildings b LEFT JOIN grids u ON u.id = b.grid_id
        WHERE {where}
    """


def buildings_in_bbox(conn: Connection, bbox: tuple[float, float, float, float],
                      limit: int = 1000, offset: int = 0) -> dict:
    """Buildings intersecting ``bbox`` (lon/lat), ordered by id, paged by limit/offset."""
    params = dict(zip(("minx", "miny", "maxx", "maxy"), bbox), limit=limit, offset=offset)
    where = "b.geom && ST_MakeEnvelope(:minx, :miny, :maxx, :maxy, 4326)"
    matched = conn.execute(text(f"SELECT count(*) FROM buildings b WHERE {where}"),
                           params).scalar_one()
    fc = feature_collection(
        conn, _select(where) + " ORDER BY b.id LIMIT :limit OFFSET :offset", params)
    fc["numberMatched"] = matched
    fc["numberReturned"] = len(fc["features"])
    return fc


def get_building(conn: Connection, building_id: int, mode: str = "masked") -> dict:
    """One building with its households and each household's members.

    ``mode`` decides personal fields (names, ID numbers, phones, room numbers, birth dates):
    ``unmasked``, ``masked`` or ``removed`` (see ``privacy.apply_personal_mode``); deciding
    who gets which (and auditing unmasked reads) is the caller's job.
    """
    feature = single_feature(conn, _select("b.id = :id"), {"id": building_id})
    if feature is None:
        raise not_found("building", building_id)
    households = [dict(r._mapping) for r in conn.execute(text("""
        SELECT id, unit, room, head_name, size, is_rental FROM households
        WHERE building_id = :id ORDER BY unit, room, id
    """), {"id": building_id})]
    members: dict[int, list[dict]] = {}
    for r in conn.execute(text("""
        SELECT p.household_id, p.id, p.name, p.relation, p.gender,
               to_char(p.birth_date, 'YYYY-MM-DD') AS birth_date, p.id_number, p.phone,
               p.category, p.special_group
        FROM persons p JOIN households h ON h.id = p.household_id
        WHERE h.building_id = :id
        ORDER BY p.household_id, (p.relation = '户主') DESC, p.id
    """), {"id": building_id}):
        row = dict(r._mapping)
        members.setdefault(row.pop("household_id"), []).append(row)
    households = [
        {**apply_personal_mode(h, mode),
         "members": [apply_personal_mode(m, mode) for m in members.get(h["id"], [])]}
        for h in households]
    feature["properties"]["households"] = households
    feature["properties"]["personal_data"] = mode
    return feature

"""Households: listing by grid or bbox and the household → members view, privacy-aware."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import not_found
from .privacy import apply_personal_mode

MAX_HOUSEHOLDS = 5_000


def list_households(conn: Connection, grid_prefix: str | None = None,
                    bbox: tuple[float, float, float, float] | None = None,
                    mode: str = "masked", limit: int = 1000, offset: int = 0) -> dict:
    """Households (without members) in a grid subtree and/or a bbox, ordered by id."""
    where, params = ["true"], {"limit": limit, "offset": offset}
    if grid_prefix:
        where.append("left(u.code, length(:prefix)) = :prefix")
        params["prefix"] = grid_prefix
    if bbox:
        where.append("b.anchor && ST_MakeEnvelope(:minx, :miny, :maxx, :maxy, 4326)")
        params.update(zip(("minx", "miny", "maxx", "maxy"), bbox))
    sql_from = f"""
        FROM households h JOIN buildings b ON b.id = h.building_id
        LEFT JOIN grids u ON u.id = h.grid_id
        WHERE {' AND '.join(where)}"""
    matched = conn.execute(text(f"SELECT count(*) {sql_from}"), params).scalar_one()
    rows = [dict(r._mapping) for r in conn.execute(text(f"""
        SELECT h.id, h.building_id, b.address AS building_address, h.unit, h.room,
               h.head_name, h.size, h.is_rental, u.code AS grid_code
        {sql_from} ORDER BY h.id LIMIT :limit OFFSET :offset"""), params)]
    return {"households": [apply_personal_mode(r, mode) for r in rows],
            "numberMatched": matched, "numberReturned": len(rows),
            "personal_data": mode}


def get_household(conn: Connection, household_id: int, mode: str = "masked") -> dict:
    row = conn.execute(text("""
        SELECT h.id, h.building_id, b.address AS building_address, h.unit, h.room,
               h.head_name, h.size, h.is_rental, u.code AS grid_code
        FROM households h JOIN buildings b ON b.id = h.building_id
        LEFT JOIN grids u ON u.id = h.grid_id
        WHERE h.id = :id"""), {"id": household_id}).one_or_none()
    if row is None:
        raise not_found("household", household_id)
    household = dict(row._mapping)
    members = [dict(r._mapping) for r in conn.execute(text("""
        SELECT id, name, relation, gender, to_char(birth_date, 'YYYY-MM-DD') AS birth_date,
               id_number, phone, category, special_group
        FROM persons WHERE household_id = :id
        ORDER BY (relation = '户主') DESC, id"""), {"id": household_id})]
    household = apply_personal_mode(household, mode)
    household["members"] = [apply_personal_mode(m, mode) for m in members]
    household["personal_data"] = mode
    return household

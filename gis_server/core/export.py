"""Partitioned GeoParquet exports of the de-identified ``analytics`` views, for data beyond one
machine (dask-geopandas on a ``distributed`` cluster reads them back in parallel).

Layout (Hive style, what dask/pyarrow read as partition columns)::

    OUT/positions/day=2026-03-01/part-0.parquet
    OUT/incidents/community_code=11010800100100/part-0.parquet

The export reads through ``analytics.*`` (no personal field can leak), in chunks, so memory
stays bounded by the largest partition.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import geopandas as gpd
from sqlalchemy import text
from sqlalchemy.engine import Connection


def _write_partitions(gdf: gpd.GeoDataFrame, out: Path, column: str) -> list[Path]:
    written = []
    for value, part in gdf.groupby(column, sort=True):
        folder = out / f"{column}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        existing = len(list(folder.glob("part-*.parquet")))
        path = folder / f"part-{existing}.parquet"
        part.drop(columns=[column]).to_parquet(path, index=False)
        written.append(path)
    return written


def export_positions(conn: Connection, out_dir: str | Path, start: datetime,
                     end: datetime) -> list[Path]:
    """Positions recorded in [start, end) → ``out_dir/positions/day=YYYY-MM-DD/``."""
    out = Path(out_dir) / "positions"
    written: list[Path] = []
    days = conn.execute(text(
        "SELECT DISTINCT date_trunc('day', recorded_at AT TIME ZONE 'UTC')::date "
        "FROM analytics.positions WHERE recorded_at >= :s AND recorded_at < :e ORDER BY 1"),
        {"s": start, "e": end}).scalars().all()
    for day in days:  # one partition (one day) in memory at a time
        gdf = gpd.read_postgis(text("""
            SELECT worker_id, worker_role, recorded_at, speed, accuracy, grid_code, geom,
                   to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day
            FROM analytics.positions
            WHERE recorded_at >= greatest(:s, CAST(:d AS timestamptz))
              AND recorded_at < least(:e, CAST(:d AS timestamptz) + interval '1 day')
            ORDER BY recorded_at, worker_id"""), conn, geom_col="geom",
            params={"s": start, "e": end, "d": f"{day.isoformat()}T00:00:00+00:00"})
        written += _write_partitions(gdf, out, "day")
    return written


def export_incidents(conn: Connection, out_dir: str | Path, start: datetime | None = None,
                     end: datetime | None = None) -> list[Path]:
    """Incidents (reported in [start, end)) → ``out_dir/incidents/community_code=CODE/``."""
    out = Path(out_dir) / "incidents"
    gdf = gpd.read_postgis(text("""
        SELECT id, category, status, source, grid_code, street_code, department_code,
               reported_at, dispatched_at, due_at, closed_at, handling_hours::float8,
               closed_on_time, geom, coalesce(community_code, 'none') AS community_code
        FROM analytics.incidents
        WHERE (CAST(:s AS timestamptz) IS NULL OR reported_at >= :s)
          AND (CAST(:e AS timestamptz) IS NULL OR reported_at < :e)
        ORDER BY id"""), conn, geom_col="geom", params={"s": start, "e": end})
    return _write_partitions(gdf, out, "community_code")


def read_partitioned(path: str | Path, npartitions_hint: int | None = None):
    """A dask-geopandas GeoDataFrame over a partitioned export (partition column restored)."""
    import dask_geopandas
    ddf = dask_geopandas.read_parquet(str(path))
    return ddf if npartitions_hint is None else ddf.repartition(npartitions=npartitions_hint)


def incidents_per_grid(path: str | Path):
    """Incidents, closed and closed-on-time per unit grid, computed by dask (lazy)."""
    ddf = read_partitioned(path)
    ddf = ddf.assign(closed=ddf["closed_at"].notnull(),
                     on_time=ddf["closed_on_time"].fillna(False).astype(bool))
    return ddf.groupby("grid_code").agg({"id": "count", "closed": "sum", "on_time": "sum"}) \
        .rename(columns={"id": "incidents"})


def distance_walked_per_worker(path: str | Path, metric_crs: str = "EPSG:4548"):
    """Metres walked per worker and day from a positions export (dask, per partition)."""
    ddf = read_partitioned(path)

    def per_partition(df):
        import pandas as pd
        if df.empty:
            return pd.DataFrame({"worker_id": [], "day": [], "metres": []})
        g = df.to_crs(metric_crs).sort_values(["worker_id", "recorded_at"])
        prev = g.geometry.groupby(g["worker_id"].values).shift()
        step = g.geometry.distance(gpd.GeoSeries(prev, crs=metric_crs)).fillna(0)
        return pd.DataFrame({"worker_id": g["worker_id"].values,
                             "day": g["day"].astype(str).values, "metres": step.values}) \
            .groupby(["worker_id", "day"], as_index=False)["metres"].sum()

    import pandas as pd
    meta = pd.DataFrame({"worker_id": pd.Series(dtype="int64"),
                         "day": pd.Series(dtype="object"), "metres": pd.Series(dtype="float64")})
    return ddf.map_partitions(per_partition, meta=meta)

"""Partitioned GeoParquet exports processed with dask-geopandas on a distributed LocalCluster."""
from __future__ import annotations

from datetime import datetime, timezone

import geopandas as gpd
import pytest
from sqlalchemy import text

from gis_server.core import export


@pytest.fixture(scope="module")
def data(engine):
    with engine.begin() as conn:
        ids = conn.execute(text("""
            INSERT INTO incidents (category, description, geom, source, reporter, status,
                                   grid_id, reported_at, dispatched_at, due_at, closed_at)
            SELECT 'other', '导出测试 赵六', ST_PointOnSurface(g.geom), 'patrol', '赵六',
                   'closed', g.id, timestamptz '2026-06-01 08:00+00',
                   timestamptz '2026-06-01 08:30+00', timestamptz '2026-06-01 12:00+00',
                   timestamptz '2026-06-01 09:00+00' + ((g.id % 5) * 2 || ' hours')::interval
            FROM grids g WHERE g.level = 'unit' AND g.valid_to IS NULL
            RETURNING id""")).scalars().all()
        workers = conn.execute(text("SELECT id FROM workers ORDER BY id LIMIT 3")).scalars().all()
        # each worker walks east 10 m a minute for 2 hours on 2 days
        conn.execute(text("""
            INSERT INTO positions (worker_id, recorded_at, geom)
            SELECT w, timestamptz '2026-06-01 08:00+00' + (d || ' days')::interval
                      + (s || ' minutes')::interval,
                   ST_Transform(ST_SetSRID(ST_MakePoint(440000 + s * 10, 4428000 + w), 4548),
                                4326)
            FROM unnest(CAST(:w AS int[])) w, generate_series(0, 1) d, generate_series(0, 119) s
        """), {"w": workers})
    yield {"incidents": ids, "workers": workers}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM incidents WHERE id = ANY(:i)"), {"i": ids})
        conn.execute(text("DELETE FROM positions WHERE recorded_at >= '2026-06-01' "
                          "AND recorded_at < '2026-06-04'"))


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_export_is_partitioned_and_de_identified(engine, data, tmp_path):
    with engine.connect() as conn:
        pos = export.export_positions(conn, tmp_path, datetime(2026, 6, 1, tzinfo=timezone.utc),
                                      datetime(2026, 6, 3, tzinfo=timezone.utc))
        inc = export.export_incidents(conn, tmp_path,
                                      datetime(2026, 6, 1, tzinfo=timezone.utc),
                                      datetime(2026, 6, 2, tzinfo=timezone.utc))
    assert sorted(p.parent.name for p in pos) == ["day=2026-06-01", "day=2026-06-02"]
    communities = {p.parent.name for p in inc}
    assert communities and all(c.startswith("community_code=") for c in communities)
    one = gpd.read_parquet(pos[0])
    assert one.crs.to_epsg() == 4326 and len(one) == 3 * 120
    assert not {"name", "phone", "device_id"} & set(one.columns)
    frame = gpd.read_parquet(inc[0])
    assert not {"reporter", "description", "address"} & set(frame.columns)


def test_dask_geopandas_on_a_local_cluster(engine, data, tmp_path, dask_client):
    with engine.connect() as conn:
        export.export_positions(conn, tmp_path, datetime(2026, 6, 1, tzinfo=timezone.utc),
                                datetime(2026, 6, 3, tzinfo=timezone.utc))
        export.export_incidents(conn, tmp_path, datetime(2026, 6, 1, tzinfo=timezone.utc),
                                datetime(2026, 6, 2, tzinfo=timezone.utc))
    per_grid = export.incidents_per_grid(tmp_path / "incidents").compute()
    assert per_grid["incidents"].sum() == len(data["incidents"])
    assert (per_grid["closed"] == per_grid["incidents"]).all()
    with engine.connect() as conn:
        on_time = conn.execute(text("SELECT count(*) FROM analytics.incidents "
                                    "WHERE id = ANY(:i) AND closed_on_time"),
                               {"i": data["incidents"]}).scalar()
    assert per_grid["on_time"].sum() == on_time
    walked = export.distance_walked_per_worker(tmp_path / "positions").compute()
    assert len(walked) == 6  # 3 workers × 2 days
    assert walked["metres"].tolist() == pytest.approx([1190.0] * 6, rel=1e-3)
    assert dask_client.scheduler_info()["workers"]  # ran on the cluster's workers

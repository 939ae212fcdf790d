"""The embedded cluster: idempotent lifecycle, its own port, PostGIS on first use."""
from __future__ import annotations

import os
import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from gis_server.pgcluster import Cluster, ClusterError, create_database, drop_database

pytestmark = pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")),
                                reason="DATABASE_URL points at an external server")


def test_start_is_idempotent_and_fast_when_running():
    cluster = Cluster()
    cluster.start()
    t0 = time.monotonic()
    cluster.start()
    assert time.monotonic() - t0 < 2
    assert cluster.status() is True
    assert cluster.port != 5432
    assert cluster.datadir.is_relative_to(cluster.data_root)


def test_fresh_database_has_postgis():
    cluster = Cluster()
    name = f"gis_test_cluster_{os.getpid()}"
    url = make_url(create_database(cluster.url(), name, drop_first=True))
    try:
        with psycopg.connect(host=url.host, port=url.port, user=url.username,
                             password=url.password, dbname=name) as conn:
            version = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
        assert version.startswith("3.")
    finally:
        drop_database(cluster.url(), name)


def test_missing_postgis_names_the_package(tmp_path, monkeypatch):
    import glob as globmod
    real_glob = globmod.glob
    monkeypatch.setattr("gis_server.pgcluster.glob.glob",
                        lambda p: [] if p.endswith("postgis.control") else real_glob(p))
    with pytest.raises(ClusterError, match=r"apt-get install postgresql-\d+-postgis-3"):
        Cluster(data_root=tmp_path).check_postgis_installed()


def test_another_server_on_our_port_is_not_mistaken_for_ours(tmp_path):
    running = Cluster()
    running.start()
    stranger = Cluster(data_root=tmp_path, port=running.port)
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "PG_VERSION").write_text("15\n")  # looks initialised, never started
    assert stranger.status() is False
    with pytest.raises(ClusterError, match="GIS_PG_PORT"):
        stranger.start()

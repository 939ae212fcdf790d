"""The notebooks in notebooks/ run top to bottom against the live test server (nbclient), with
an analyst's token, so they cannot rot. ``GIS_SAVE_NOTEBOOKS=1`` writes the executed notebooks
(plots inline) back to notebooks/."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_data(engine):
    """Incidents over two weeks, a day of patrol positions and the workers' latest positions,
    written straight to the tables (columns of migration 0001)."""
    with engine.begin() as conn:
        ids = conn.execute(text("""
            INSERT INTO incidents (category, description, geom, source, reporter, status,
                                   grid_id, department_id, reported_at, dispatched_at, due_at,
                                   closed_at)
            SELECT (ARRAY['city_appearance', 'street_order', 'construction', 'advertising'])
                       [1 + (n + g.id) % 4],
                   'notebook data', ST_GeometryN(ST_GeneratePoints(g.geom, 1, n + g.id), 1), 'patrol', '测试',
                   CASE WHEN n % 5 = 0 THEN 'dispatched' ELSE 'closed' END, g.id,
                   (SELECT id FROM departments ORDER BY id OFFSET (n % greatest(1,
                       (SELECT count(*) FROM departments)::int)) LIMIT 1),
                   t, t + interval '1 hour', t + interval '9 hours',
                   CASE WHEN n % 5 = 0 THEN NULL
                        ELSE t + interval '1 hour' + ((n * 7 + g.id) % 14 || ' hours')::interval END
            FROM grids g, generate_series(1, 12) n,
                 LATERAL (SELECT timestamptz '2026-07-01 08:00+00'
                                 + ((n * 29 + g.id * 13) % 336 || ' hours')::interval AS t) tt
            WHERE g.level = 'unit' AND g.valid_to IS NULL
              AND (n <= 3 OR right(g.code, 1) IN ('1', '2'))
            RETURNING id""")).scalars().all()
        conn.execute(text("""
            INSERT INTO positions (worker_id, recorded_at, geom, grid_id)
            SELECT w.id, timestamptz '2026-07-02 08:00+00' + (s * 5 || ' minutes')::interval,
                   ST_GeometryN(ST_GeneratePoints(g.geom, 1, s + w.id), 1), g.id
            FROM (SELECT DISTINCT ON (wg.worker_id) wg.worker_id AS id, wg.grid_code
                  FROM worker_grids wg ORDER BY wg.worker_id, wg.grid_code) w
            JOIN grids g ON g.code = w.grid_code AND g.valid_to IS NULL AND g.level = 'unit',
                 generate_series(0, 11) s
            WHERE w.id % 3 <> 0"""))
        conn.execute(text("""
            INSERT INTO latest_positions (worker_id, recorded_at, geom, grid_id)
            SELECT DISTINCT ON (p.worker_id) p.worker_id, p.recorded_at,
                   CASE WHEN p.worker_id % 4 = 0
                        THEN (SELECT ST_PointOnSurface(geom) FROM grids WHERE level = 'unit'
                              AND valid_to IS NULL ORDER BY code DESC LIMIT 1)
                        ELSE p.geom END, p.grid_id
            FROM positions p WHERE p.recorded_at >= '2026-07-02' AND p.recorded_at < '2026-07-03'
            ORDER BY p.worker_id, p.recorded_at DESC
            ON CONFLICT (worker_id) DO NOTHING"""))
    yield ids
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM incidents WHERE id = ANY(:i)"), {"i": ids})
        conn.execute(text("DELETE FROM positions WHERE recorded_at >= '2026-07-02' "
                          "AND recorded_at < '2026-07-03'"))
        conn.execute(text("DELETE FROM latest_positions WHERE recorded_at >= '2026-07-02' "
                          "AND recorded_at < '2026-07-03'"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, live_server, accounts, notebook_data, monkeypatch):
    monkeypatch.setenv("GIS_SERVER_URL", live_server)
    monkeypatch.setenv("GIS_TOKEN", accounts["analyst"]["token"])
    monkeypatch.setenv("GIS_PERIOD_START", "2026-07-02T00:00:00Z")
    monkeypatch.setenv("GIS_PERIOD_END", "2026-07-03T00:00:00Z")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "every notebook draws its plots and maps"
    if os.environ.get("GIS_SAVE_NOTEBOOKS"):
        nbformat.write(nb, path)

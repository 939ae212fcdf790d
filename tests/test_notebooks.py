"""The notebooks in notebooks/ run top to bottom against the live test server (nbclient), with
an analyst's token (and a planner's for the what-if redraw), so they cannot rot.

The data they analyse is produced the way the city produces it (tests/notebook_data.py): four
weeks of history through the bulk import, today's cases through the incident and Open311 APIs
and the closed loop, patrols through the positions API. ``GIS_SAVE_NOTEBOOKS=1`` writes the
executed notebooks (plots inline) back to notebooks/."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from sqlalchemy import text

from notebook_data import seed

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# What an Open311 reporter sent (tests/notebook_data.py) and fields an analyst never receives.
PERSONAL = ["13800000000", "Resident", "reported from the city app", "seen on patrol",
            "seen on a camera", "(history ", "reporter", "description"]


@pytest.fixture(scope="module")
def notebook_data(live_server, engine, app, accounts):
    return seed(live_server, engine, app, accounts)


def test_seeded_data_is_what_the_notebooks_need(notebook_data, engine):
    """The seeding went through the real features: closed, late, open and overdue cases,
    public (Open311) reports, patrols with unwalked grids and a worker outside their grid."""
    s = notebook_data
    assert s.history > 300 and len(s.live) >= 50 and len(s.open311) >= 15
    assert {"closed", "evaluated", "handling", "dispatched", "parked", "rejected"} \
        <= set(s.outcomes)
    assert all(p["accepted"] == p["received"] for p in s.position_summaries)
    assert s.walkers and s.leavers
    with engine.connect() as conn:
        late, on_time, overdue = conn.execute(text("""
            SELECT count(*) FILTER (WHERE closed_at > due_at),
                   count(*) FILTER (WHERE closed_at <= due_at),
                   count(*) FILTER (WHERE closed_at IS NULL AND due_at < now())
            FROM incidents""")).one()
        exits = conn.execute(text("SELECT count(DISTINCT worker_id) FROM position_events "
                                  "WHERE kind = 'grid_exit' AND worker_id = ANY(:w)"),
                             {"w": s.leavers}).scalar_one()
        rework = conn.execute(text("SELECT count(*) FROM incidents WHERE rework_count > 0 "
                                   "AND id = ANY(:i)"), {"i": s.live}).scalar_one()
    assert late > 20 and on_time > 100 and overdue > 0
    assert exits == len(s.leavers) and rework > 0


def _outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def _text(outputs) -> str:
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        for key, value in o.get("data", {}).items():
            if key.startswith("text/"):
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, live_server, accounts, notebook_data, engine, monkeypatch):
    monkeypatch.setenv("GIS_SERVER_URL", live_server)
    monkeypatch.setenv("GIS_TOKEN", accounts["analyst"]["token"])
    monkeypatch.setenv("GIS_PLANNER_TOKEN", accounts["planner"]["token"])
    monkeypatch.setenv("GIS_PATROL_DATE", notebook_data.day.isoformat())
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = _outputs(nb)
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(e.get("evalue", "") for e in errors)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "every notebook draws its plots and maps"
    shown = _text(outputs)
    with engine.connect() as conn:  # no worker's phone or device id either
        workers = conn.execute(text("SELECT phone, device_id FROM workers")).all()
    leaked = [p for p in PERSONAL + [v for w in workers for v in w if v] if p in shown]
    assert not leaked, f"personal data in the notebook's output: {leaked}"
    if os.environ.get("GIS_SAVE_NOTEBOOKS"):
        nbformat.write(nb, path)
    # what each notebook found in the seeded data (its last cell prints "Summary: {...}")
    found = re.search(r"^Summary: (\{.*\})$", shown, re.M)
    assert found, "the notebook ends with its summary"
    facts = json.loads(found.group(1))
    seeded = notebook_data
    if path.name.startswith("01"):
        assert facts["incidents"] >= seeded.history + len(seeded.live) \
            and facts["hot"] >= 1
    elif path.name.startswith("02"):
        assert facts["communities"] >= 2 and facts["departments"] >= 5 and facts["late"] > 0
        assert 0 < facts["on_time_rate_min"] < facts["on_time_rate_max"] <= 1
    elif path.name.startswith("03"):
        assert facts["day"] == seeded.day.isoformat() and facts["walked"] >= len(seeded.walkers)
        assert set(seeded.leavers) <= set(facts["exited"]) and facts["outside_now"] >= 1
    elif path.name.startswith("04"):
        assert facts["moved_households"] > 0 and facts["discarded"] == "discarded"
        assert facts["heavy_after"] < facts["heavy_before"]
        assert facts["spread_after"] < facts["spread_before"]

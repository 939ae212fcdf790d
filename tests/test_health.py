from __future__ import annotations

from gis_server import create_app


def test_healthz_reports_postgis(client):
    body = client.get("/healthz").json
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["postgis"].startswith("3.")


def test_healthz_is_503_when_database_is_down():
    app = create_app({"TESTING": True,
                      "DATABASE_URL": "postgresql+psycopg://nobody:x@127.0.0.1:1/none"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json == {"status": "error", "database": "unreachable"}


def test_unknown_route_is_json_404(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.json["error"] == "not_found"

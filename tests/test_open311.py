"""Open311 GeoReport v2: a real client library (georeport, PyPI) reads, raw spec requests
write; JSON and XML (element names checked with xml.etree); errors in the spec's format."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import requests
import shapely
from georeport import GeoReport
from sqlalchemy import text

REQUEST_FIELDS = ["service_request_id", "status", "status_notes", "service_name",
                  "service_code", "description", "agency_responsible", "service_notice",
                  "requested_datetime", "updated_datetime", "expected_datetime", "address",
                  "address_id", "zipcode", "lat", "long", "media_url"]


@pytest.fixture(scope="module")
def spot(engine):
    with engine.connect() as conn:
        code, wkb = conn.execute(text(
            "SELECT code, ST_AsBinary(geom) FROM grids WHERE level = 'unit' "
            "AND valid_to IS NULL ORDER BY code LIMIT 1 OFFSET 2")).one()
    p = shapely.from_wkb(bytes(wkb)).point_on_surface()
    return code, p.x, p.y


@pytest.fixture(scope="module")
def base(live_server):
    return f"{live_server}/open311/v2"


@pytest.fixture(scope="module")
def key(accounts):
    return accounts["reporter"]["token"]


def submit(base, key, spot, fmt="json", **extra):
    code, lon, lat = spot
    data = {"api_key": key, "service_code": "P0201", "lat": lat, "long": lon,
            "attribute[size]": "medium", "description": "坑槽 pothole",
            "first_name": "李", "last_name": "雷", "email": "li@example.org",
            "phone": "13912345678", "media_url": "https://example.org/p.jpg", **extra}
    return requests.post(f"{base}/requests.{fmt}", data=data, timeout=10)


def test_round_trip_json_with_the_georeport_client(base, key, spot, engine):
    r = submit(base, key, spot)
    assert r.status_code == 201 and r.headers["Content-Type"].startswith("application/json")
    created = r.json()
    assert isinstance(created, list) and set(created[0]) == {
        "service_request_id", "token", "service_notice", "account_id"}
    rid = created[0]["service_request_id"]

    client = GeoReport(base)
    services = client.get_service_list()
    assert {"service_code", "service_name", "description", "metadata", "type", "keywords",
            "group"} == set(services[0])
    assert "P0201" in [s["service_code"] for s in services]
    definition = client.get_service_definition("P0201")
    assert definition["attributes"][0]["code"] == "size"
    assert [v["key"] for v in definition["attributes"][0]["values"]] == [
        "small", "medium", "large"]
    got = client.get_service_request(str(rid))
    assert list(got) == REQUEST_FIELDS
    assert got["status"] == "open" and got["service_code"] == "P0201"
    assert got["agency_responsible"]  # the department
    listed = client.get_service_requests(service_code="P0201", status="open")
    assert rid in [x["service_request_id"] for x in listed]
    assert rid not in [x["service_request_id"] for x in
                       client.get_service_requests(status="closed")]
    # token lookup
    token = created[0]["token"]
    t = requests.get(f"{base}/tokens/{token}.json", timeout=10).json()
    assert t == [{"service_request_id": rid, "token": token}]
    # nothing personal is published
    body = requests.get(f"{base}/requests/{rid}.json", timeout=10).text
    for secret in ("李", "雷", "li@example.org", "13912345678"):
        assert secret not in body
    with engine.connect() as conn:
        row = conn.execute(text("SELECT source, reporter, reporter_contact, attributes, "
                                "u.code FROM incidents i JOIN grids u ON u.id = i.grid_id "
                                "WHERE i.id = :i"), {"i": rid}).one()
    assert row.source == "public" and row.reporter == "李 雷"
    assert row.attributes == {"size": "medium"} and row.code == spot[0]


def test_workflow_states_map_to_open_closed(base, key, spot, client):
    rid = submit(base, key, spot).json()[0]["service_request_id"]
    for action in ("file", "dispatch"):
        assert client.post(f"/api/v1/incidents/{rid}/actions",
                           json={"action": action}).status_code == 200
    got = requests.get(f"{base}/requests/{rid}.json", timeout=10).json()[0]
    assert got["status"] == "open" and "Dispatched" in got["status_notes"]
    assert got["expected_datetime"] and got["expected_datetime"].endswith("+08:00")
    client.post(f"/api/v1/incidents/{rid}/actions", json={"action": "park", "reason": "x"})
    got = requests.get(f"{base}/requests/{rid}.json", timeout=10).json()[0]
    assert got["status"] == "closed" and "挂账" in got["status_notes"]


def test_xml_has_the_spec_element_names(base, key, spot):
    r = submit(base, key, spot, fmt="xml")
    assert r.status_code == 201 and r.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(r.content)
    assert root.tag == "service_requests" and root[0].tag == "request"
    rid = root.find("request/service_request_id").text
    assert root.find("request/token").text and root.find("request/service_notice").text
    detail = ET.fromstring(requests.get(f"{base}/requests/{rid}.xml", timeout=10).content)
    assert detail.tag == "service_requests"
    assert [e.tag for e in detail.find("request")] == REQUEST_FIELDS
    assert detail.find("request/status").text == "open"
    services = ET.fromstring(requests.get(f"{base}/services.xml", timeout=10).content)
    assert services.tag == "services" and services[0].tag == "service"
    assert [e.tag for e in services[0]] == ["service_code", "service_name", "description",
                                            "metadata", "type", "keywords", "group"]
    assert services.find("service/metadata").text in ("true", "false")
    definition = ET.fromstring(requests.get(f"{base}/services/P0201.xml", timeout=10).content)
    assert definition.tag == "service_definition"
    attr = definition.find("attributes/attribute")
    assert attr.find("datatype").text == "singlevaluelist"
    assert [v.find("key").text for v in attr.findall("values/value")] == [
        "small", "medium", "large"]
    disc = ET.fromstring(requests.get(f"{base}/discovery.xml", timeout=10).content)
    assert disc.tag == "discovery"
    assert [f.text for f in disc.findall("endpoints/endpoint/formats/format")] == [
        "text/xml", "application/json"]
    # the client library in XML mode too
    got = GeoReport(base, output_format="xml").get_service_request(rid)
    assert got["service_request_id"] == rid


def test_address_string_is_resolved(base, key, engine):
    with engine.connect() as conn:
        address, code = conn.execute(text(
            "SELECT b.address, u.code FROM buildings b JOIN grids u ON u.id = b.grid_id "
            "WHERE b.address IN (SELECT address FROM buildings GROUP BY address "
            "HAVING count(*) = 1) LIMIT 1")).one()
    r = requests.post(f"{base}/requests.json", data={
        "api_key": key, "service_code": "E0101", "address_string": address}, timeout=10)
    assert r.status_code == 201, r.text
    rid = r.json()[0]["service_request_id"]
    got = requests.get(f"{base}/requests/{rid}.json", timeout=10).json()[0]
    assert got["address"] == address


def errors_of(r, fmt):
    if fmt == "json":
        body = r.json()
        assert isinstance(body, list) and set(body[0]) == {"code", "description"}
        return body[0]["code"], body[0]["description"]
    root = ET.fromstring(r.content)
    assert root.tag == "errors" and root[0].tag == "error"
    return int(root.find("error/code").text), root.find("error/description").text


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("change,status,word", [
    ({"api_key": "gis_" + "x" * 43}, 403, "api_key"),
    ({"api_key": "wrong"}, 403, "api_key"),
    ({"api_key": ""}, 400, "api_key"),
    ({"service_code": "NOPE"}, 400, "service_code"),
    ({"service_code": ""}, 400, "service_code"),
    ({"lat": "95"}, 400, "lat"),
    ({"long": "abc"}, 400, "long"),
    ({"lat": "", "long": ""}, 400, "long"),
    ({"description": "x" * 4001}, 400, "description"),
    ({"attribute[size]": "enormous"}, 400, "attribute[size]"),
    ({"attribute[colour]": "red"}, 400, "attribute[colour]"),
    ({"media_url": "ftp://x"}, 400, "media_url"),
    ({"lat": "10", "long": "10"}, 400, "no unit grid covers"),  # far outside the city
])
def test_bad_posts_answer_the_spec_error_format(base, key, spot, engine, fmt, change, status,
                                                word):
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM incidents")).scalar_one()
    r = submit(base, key, spot, fmt=fmt, **change)
    assert r.status_code == status, r.text
    code, description = errors_of(r, fmt)
    assert code == status and word in description
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM incidents")).scalar_one() == before


def test_bad_gets(base):
    for url, status in ((f"{base}/requests/999999999.json", 404),
                        (f"{base}/requests/abc.json", 400),
                        (f"{base}/services/NOPE.json", 404),
                        (f"{base}/tokens/nope.xml", 404),
                        (f"{base}/requests.json?status=pending", 400),
                        (f"{base}/requests.json?start_date=2020-01-01&end_date=2021-01-01",
                         400),
                        (f"{base}/requests.json?start_date=garbage", 400)):
        r = requests.get(url, timeout=10)
        fmt = "xml" if url.split("?")[0].endswith(".xml") else "json"
        assert r.status_code == status, url
        assert errors_of(r, fmt)[0] == status


def test_staff_token_works_as_api_key_and_reads_need_no_key(base, accounts, spot):
    r = submit(base, accounts["grid_worker"]["token"], spot)
    assert r.status_code == 201
    assert requests.get(f"{base}/services.json", timeout=10).status_code == 200

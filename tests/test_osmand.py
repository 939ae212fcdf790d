"""OsmAnd / Traccar Client protocol parsing, against the parameter forms Traccar documents
and its OsmAndProtocolDecoder accepts."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from werkzeug.datastructures import MultiDict

from gis_server.core.osmand import KNOT_MS, parse_batch_item, parse_json, parse_query, parse_time
from gis_server.errors import APIError

T = datetime(2026, 11, 24, 8, 0, 0, tzinfo=timezone.utc)
EPOCH = int(T.timestamp())


def test_query_form_full():
    fix = parse_query(MultiDict({
        "id": "123456", "lat": "39.9", "lon": "116.3", "timestamp": str(EPOCH),
        "speed": "10", "bearing": "90.5", "altitude": "45", "accuracy": "8", "hdop": "1.2",
        "batt": "77", "charge": "true", "valid": "1", "driverUniqueId": "abc",
        "satellites": "9", "ignition": "false"}))
    assert fix.device_id == "123456"
    assert (fix.lat, fix.lon) == (39.9, 116.3)
    assert fix.recorded_at == T
    assert fix.speed == pytest.approx(10 * KNOT_MS)  # knots → m/s
    assert fix.bearing == 90.5 and fix.altitude == 45 and fix.accuracy == 8
    assert fix.battery == 77
    # unknown parameters are kept as attributes, typed like Traccar does
    assert fix.attributes == {"hdop": 1.2, "charge": True, "valid": True,
                              "driverUniqueId": "abc", "satellites": 9.0, "ignition": False}


@pytest.mark.parametrize("value,expected", [
    (str(EPOCH), T),                                    # epoch seconds
    (str(EPOCH * 1000), T),                             # epoch milliseconds
    ("2026-11-24T08:00:00Z", T),                        # ISO 8601, Z
    ("2026-11-24T16:00:00+08:00", T),                   # ISO 8601 with offset
    ("2026-11-24T08:00:00.000Z", T),
    ("2026-11-24 08:00:00", T),                         # Traccar's yyyy-MM-dd HH:mm:ss
])
def test_timestamp_forms(value, expected):
    assert parse_time(value) == expected


def test_deviceid_and_location_and_heading_aliases():
    fix = parse_query({"deviceid": "dev-1", "location": "39.91,116.31", "heading": "270"})
    assert fix.device_id == "dev-1" and (fix.lat, fix.lon) == (39.91, 116.31)
    assert fix.bearing == 270 and fix.recorded_at is None  # no time: server clock


@pytest.mark.parametrize("params,field", [
    ({"lat": "1", "lon": "2"}, "id"),
    ({"id": "x", "lat": "abc", "lon": "2"}, "lat"),
    ({"id": "x", "lat": "1"}, "lon"),
    ({"id": "x", "lat": "95", "lon": "2"}, "lat"),
    ({"id": "x", "lat": "1", "lon": "2", "timestamp": "yesterday"}, "timestamp"),
    ({"id": "x", "location": "1"}, "location"),
    ({"id": "x", "lat": "1", "lon": "2", "speed": "fast"}, "speed"),
])
def test_bad_query_names_the_field(params, field):
    with pytest.raises(APIError) as err:
        parse_query(params)
    assert err.value.status == 400 and err.value.field == field


def test_json_variant():
    fix = parse_json({"device_id": "99", "location": {
        "timestamp": "2026-11-24T08:00:00.000Z",
        "coords": {"latitude": 39.9, "longitude": 116.3, "speed": 1.5, "heading": -1,
                   "accuracy": 5, "altitude": 40},
        "battery": {"level": 0.42, "is_charging": True},
        "is_moving": True, "odometer": 1200, "activity": {"type": "walking"},
        "extras": {"alarm": "sos"}}})
    assert fix.device_id == "99" and fix.recorded_at == T
    assert (fix.lat, fix.lon) == (39.9, 116.3)
    assert fix.speed == 1.5  # m/s in the JSON form
    assert fix.bearing is None  # negative heading = unknown
    assert fix.accuracy == 5 and fix.altitude == 40 and fix.battery == 42
    assert fix.attributes == {"charge": True, "motion": True, "odometer": 1200,
                              "activity": "walking", "alarm": "sos"}


@pytest.mark.parametrize("body,field", [
    ({"location": {}}, "device_id"),
    ({"device_id": "1"}, "location"),
    ({"device_id": "1", "location": {"coords": {"latitude": "x", "longitude": 1}}},
     "location.coords.latitude"),
    ({"device_id": "1", "location": {"timestamp": "soon"}}, "location.timestamp"),
])
def test_bad_json_names_the_field(body, field):
    with pytest.raises(APIError) as err:
        parse_json(body)
    assert err.value.field == field


def test_batch_items_accept_both_forms():
    flat = parse_batch_item({"device_id": "7", "lat": 1.5, "lon": 2.5, "timestamp": EPOCH,
                             "speed": 2}, 0)
    assert flat.device_id == "7" and flat.recorded_at == T and flat.speed == 2 * KNOT_MS
    nested = parse_batch_item({"device_id": "7", "location": {
        "timestamp": "2026-11-24T08:00:00Z", "coords": {"latitude": 1, "longitude": 2}}}, 1)
    assert (nested.lat, nested.lon) == (1, 2)
    with pytest.raises(APIError) as err:
        parse_batch_item({"device_id": "7", "lat": "x", "lon": 1}, 3)
    assert err.value.field == "positions[3].lat"


def _same_columns(a, b):
    import numpy as np
    assert a.device_id == b.device_id and a.attributes == b.attributes
    assert (a.has_time == b.has_time).all() and (a.t_us[a.has_time] == b.t_us[b.has_time]).all()
    for name in ("lat", "lon", "speed", "bearing", "altitude", "accuracy", "battery"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_flat_batch_decoder_reads_what_the_general_parser_reads():
    import json

    from gis_server.core.osmand import FixColumns, decode_flat_batch
    items = [
        {"id": "7", "lat": 1.5, "lon": 2.5, "timestamp": EPOCH, "speed": 2},
        {"device_id": " 8 ", "lat": -1, "lon": 179.5, "timestamp": EPOCH * 1000 + 123,
         "bearing": 90.5, "altitude": 41, "accuracy": 7, "batt": 80},
        {"id": "9", "lat": 0, "lon": 0, "timestamp": "2026-11-24T08:00:00Z"},
        {"id": "10", "lat": 0.25, "lon": 0.5},  # no time: the server's clock
        {"id": "11", "lat": 0.25, "lon": 0.5, "timestamp": 2**31 - 1, "speed": None},
    ]
    for body in ({"positions": items}, items):
        fast = decode_flat_batch(json.dumps(body).encode())
        general = FixColumns.from_fixes([parse_batch_item(x, i) for i, x in enumerate(items)])
        _same_columns(fast, general)
    # anything unusual is left to the general parser (which names the field of an error)
    base = items[0]
    for unusual in ({**base, "lat": "1.5"}, {**base, "hdop": 1}, {**base, "lat": True},
                    {**base, "lat": 91}, {**base, "device_id": "x"}, {**base, "id": " "},
                    {**base, "timestamp": 10**30}, {**base, "timestamp": 1.5},
                    {**base, "timestamp": "yesterday"}, {"id": "7", "lon": 1},
                    {"device_id": "7", "location": {"coords": {"latitude": 1, "longitude": 2}}}):
        assert decode_flat_batch(json.dumps([base, unusual]).encode()) is None, unusual
    assert decode_flat_batch(b'[{"id": "7", "lat": NaN, "lon": 1}]') is None
    assert decode_flat_batch(b'{"positions": 3}') is None
    assert decode_flat_batch(b"{not json") is None

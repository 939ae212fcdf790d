"""GeoDataFrames from a gis-server, for notebooks::

    from gis_server.client import Client
    c = Client("http://gis.example", token)          # or Client() with GIS_SERVER_URL/GIS_TOKEN
    units = c.grids("unit")                          # current unit grids
    past = c.grids("unit", at="2026-03-01")          # the grids in force on 1 March
    inc = c.incidents(category="city_appearance", since="2026-03-01", until="2026-04-01")
    pos = c.positions("2026-03-01T08:00", "2026-03-01T18:00")
    b = c.buildings(bbox=(116.29, 39.97, 116.31, 39.99))

Everything goes through the OGC API – Features items endpoints (``/ogc/collections/ID/items``):
pages are followed through their ``next`` links (keyset cursors, so page 300 is as fast as
page 1), a tqdm progress bar shows long downloads (total = ``numberMatched``), and the caller's
token decides scope and personal data (an analyst's token never receives a personal field).
"""
from __future__ import annotations

import json
import os
from datetime import date, datetime

import geopandas as gpd
import pandas as pd
import requests

PAGE_SIZE = 10_000
CRS84 = "OGC:CRS84"


class ClientError(RuntimeError):
    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"HTTP {status}: {message}")


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _interval(start, end) -> str | None:
    if start is None and end is None:
        return None
    return f"{_iso(start) or '..'}/{_iso(end) or '..'}"


class Client:
    def __init__(self, base_url: str | None = None, token: str | None = None,
                 progress: bool = True, page_size: int = PAGE_SIZE, timeout: float = 120):
        self.base_url = (base_url or os.environ.get("GIS_SERVER_URL") or "").rstrip("/")
        if not self.base_url:
            raise ValueError("base_url is required (or set GIS_SERVER_URL)")
        token = token or os.environ.get("GIS_TOKEN")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/geo+json, application/json"
        self.progress = progress
        self.page_size = page_size
        self.timeout = timeout

    # --- plumbing ---------------------------------------------------------------------------
    def _get(self, url: str, params: dict | None = None) -> dict:
        response = self.session.get(url, params=params, timeout=self.timeout)
        if response.status_code != 200:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ClientError(response.status_code, body)
        return json.loads(response.content)

    def collections(self) -> pd.DataFrame:
        doc = self._get(f"{self.base_url}/ogc/collections")
        return pd.DataFrame([{"id": c["id"], "title": c["title"],
                              "description": c.get("description")}
                             for c in doc["collections"]])

    def features(self, collection: str, **params) -> gpd.GeoDataFrame:
        """All features of ``collection`` matching ``params`` (OGC items parameters)."""
        query = {k: v for k, v in params.items() if v is not None}
        if isinstance(query.get("bbox"), (tuple, list)):
            query["bbox"] = ",".join(str(v) for v in query["bbox"])
        query.setdefault("limit", self.page_size)
        url = f"{self.base_url}/ogc/collections/{collection}/items"
        features: list[dict] = []
        bar = None
        page = self._get(url, query)
        try:
            while True:
                features.extend(page["features"])
                total = page.get("numberMatched")
                if bar is None and self.progress and total and total > len(page["features"]):
                    from tqdm.auto import tqdm
                    bar = tqdm(total=total, desc=collection, unit="feature")
                    bar.update(len(page["features"]))
                elif bar is not None:
                    bar.update(len(page["features"]))
                nxt = next((link["href"] for link in page.get("links", [])
                            if link.get("rel") == "next"), None)
                if not nxt or not page["features"]:
                    break
                page = self._get(nxt)
        finally:
            if bar is not None:
                bar.close()
        return self._frame(features)

    @staticmethod
    def _frame(features: list[dict]) -> gpd.GeoDataFrame:
        if not features:
            return gpd.GeoDataFrame({"geometry": []}, geometry="geometry", crs=CRS84)
        gdf = gpd.GeoDataFrame.from_features(features, crs=CRS84)
        gdf.index = pd.Index([f.get("id") for f in features], name="fid")
        for column in gdf.columns:
            if column.endswith("_at") or column in ("valid_from", "valid_to"):
                gdf[column] = pd.to_datetime(gdf[column], utc=True, format="ISO8601")
        return gdf

    # --- the analyst's vocabulary -----------------------------------------------------------
    def grids(self, level: str = "unit", at=None, **filters) -> gpd.GeoDataFrame:
        """Grids of ``level`` (district, street, community, unit), current or valid ``at``."""
        return self.features(f"grids_{level}", datetime=_iso(at), **filters)

    def buildings(self, bbox=None, **filters) -> gpd.GeoDataFrame:
        return self.features("buildings", bbox=bbox, **filters)

    def facilities(self, bbox=None, **filters) -> gpd.GeoDataFrame:
        return self.features("facilities", bbox=bbox, **filters)

    def incidents(self, since=None, until=None, bbox=None, **filters) -> gpd.GeoDataFrame:
        """Incidents reported in [since, until]; filters: category, status, source,
        grid_code, department_code (a list means any of)."""
        filters = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple, set)) else v)
                   for k, v in filters.items()}
        return self.features("incidents", datetime=_interval(since, until), bbox=bbox,
                             **filters)

    def positions(self, start=None, end=None, **filters) -> gpd.GeoDataFrame:
        """Reported positions of workers between ``start`` and ``end``."""
        return self.features("positions", datetime=_interval(start, end), **filters)

    def latest_positions(self, **filters) -> gpd.GeoDataFrame:
        return self.features("worker_positions", **filters)

    def indicators(self, level: str = "unit", since=None, until=None) -> gpd.GeoDataFrame:
        """Per-grid indicators computed from the server's data: incidents, closure rate,
        on-time closure rate and mean handling hours per grid of ``level``."""
        grids = self.grids(level)
        incidents = self.incidents(since=since, until=until)
        prefix = {"district": 6, "street": 9, "community": 12, "unit": 14}[level]
        out = grids[["code", "name", "geometry"]].copy()
        if incidents.empty:
            for column in ("incidents", "closed", "closure_rate", "on_time_rate",
                           "mean_handling_hours"):
                out[column] = 0 if column in ("incidents", "closed") else float("nan")
            return out
        inc = pd.DataFrame(incidents.drop(columns="geometry"))
        inc["key"] = inc["grid_code"].str[:prefix]
        inc["closed"] = inc["closed_at"].notna()
        due = inc["due_at"].notna() & inc["closed"]
        inc["on_time"] = (inc["closed_at"] <= inc["due_at"]).where(due)
        start = inc["dispatched_at"].fillna(inc["reported_at"])
        inc["handling_hours"] = ((inc["closed_at"] - start).dt.total_seconds() / 3600
                                 ).where(inc["closed"])
        agg = inc.groupby("key").agg(incidents=("id", "size"), closed=("closed", "sum"),
                                     on_time_rate=("on_time", "mean"),
                                     mean_handling_hours=("handling_hours", "mean"))
        agg["closure_rate"] = agg["closed"] / agg["incidents"]
        out["key"] = out["code"].str[:prefix]
        out = out.merge(agg, how="left", left_on="key", right_index=True).drop(columns="key")
        out[["incidents", "closed"]] = out[["incidents", "closed"]].fillna(0).astype(int)
        return out

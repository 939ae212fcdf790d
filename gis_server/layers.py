"""Declarative layer descriptions (``layers/*.toml``) read by the API and the maps.

A layer says which table and geometry column it comes from, which fields the API returns
and a popup shows (with labels), and how it is styled. Adding a layer = adding a file.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .pgcluster import PROJECT_ROOT


@dataclass(frozen=True)
class Layer:
    name: str
    title: str
    table: str
    geometry: str
    geometry_type: str
    id: str
    alias: str  # the table's alias in queries (field ``sql`` expressions use it)
    fields: tuple[dict, ...]  # {name, label, sql?}
    where: str | None = None
    style: dict = field(default_factory=dict)

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.fields]

    @property
    def labels(self) -> dict[str, str]:
        return {f["name"]: f["label"] for f in self.fields}

    def select_list(self) -> str:
        """``g.code AS code, round(g.area_m2::numeric, 1) AS area_m2, ...``"""
        return ", ".join(f"{f.get('sql') or self.alias + '.' + f['name']} AS {f['name']}"
                         for f in self.fields)


def layers_dir() -> Path:
    return Path(os.environ.get("GIS_LAYERS_DIR", PROJECT_ROOT / "layers"))


@lru_cache(maxsize=4)
def _load(directory: str) -> dict[str, Layer]:
    layers = {}
    for path in sorted(Path(directory).glob("*.toml")):
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
        layers[spec["name"]] = Layer(
            name=spec["name"], title=spec["title"], table=spec["table"],
            geometry=spec["geometry"], geometry_type=spec["geometry_type"], id=spec["id"],
            alias=spec.get("alias", spec["table"][0]), fields=tuple(spec["fields"]),
            where=spec.get("where"), style=spec.get("style", {}))
    return layers


def all_layers() -> dict[str, Layer]:
    return _load(str(layers_dir()))


def get(name: str) -> Layer:
    return all_layers()[name]

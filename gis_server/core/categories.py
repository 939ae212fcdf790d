"""Incident categories (事件/部件 classes and subclasses) from a city-editable data file.

``data/categories.toml`` (``GIS_CATEGORIES_FILE`` overrides) lists classes with their
subclasses; each subclass has a code (also its Open311 ``service_code``), a name, the code of
the department it is dispatched to, a time limit in working hours (``"4h"``) or working days
(``"20d"``), optional keywords and optional Open311 attributes (the service definition).
The file is validated when read and re-read when it changes (its mtime is checked at most
once a second).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from time import monotonic

from ..pgcluster import PROJECT_ROOT
from .workcalendar import UNITS, parse_limit

DEFAULT_FILE = PROJECT_ROOT / "data" / "categories.toml"
KINDS = {"event": "事件 Event", "part": "部件 Part"}
DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    class_code: str
    class_name: str
    kind: str
    department: str
    time_limit: str
    keywords: str
    attributes: tuple[dict, ...]

    @property
    def limit(self) -> tuple[float, str]:
        return parse_limit(self.time_limit)

    def limit_text(self) -> str:
        amount, unit = self.limit
        return f"{amount:g} {UNITS[unit]}"

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "class": self.class_code,
                "class_name": self.class_name, "kind": self.kind,
                "department": self.department, "time_limit": self.time_limit}


def from_dict(spec: dict) -> dict[str, Category]:
    out: dict[str, Category] = {}
    for cls in spec.get("class", []):
        for key in ("code", "kind", "name"):
            if not cls.get(key):
                raise ValueError(f"a class lacks {key!r}: {cls}")
        if cls["kind"] not in KINDS:
            raise ValueError(f"class {cls['code']}: kind must be event or part")
        for sub in cls.get("subclasses", []):
            code = sub.get("code")
            if not code or len(code) > 40 or code in out:
                raise ValueError(f"subclass code {code!r} is missing, too long or repeated")
            for key in ("name", "department", "time_limit"):
                if not sub.get(key):
                    raise ValueError(f"subclass {code} lacks {key!r}")
            parse_limit(sub["time_limit"])
            attrs = []
            for i, a in enumerate(sub.get("attributes", []), 1):
                if a.get("datatype") not in DATATYPES or not a.get("code"):
                    raise ValueError(f"subclass {code}: attribute {a.get('code')!r} needs a "
                                     f"code and a datatype in {DATATYPES}")
                if a["datatype"].endswith("valuelist") and not a.get("values"):
                    raise ValueError(f"subclass {code}: attribute {a['code']} needs values")
                attrs.append({"variable": a.get("variable", True), "code": a["code"],
                              "datatype": a["datatype"], "required": bool(a.get("required")),
                              "datatype_description": a.get("datatype_description", ""),
                              "order": a.get("order", i),
                              "description": a.get("description", a["code"]),
                              "values": [{"key": str(v["key"]), "name": v["name"]}
                                         for v in a.get("values", [])]})
            out[code] = Category(code=code, name=sub["name"], class_code=cls["code"],
                                 class_name=cls["name"], kind=cls["kind"],
                                 department=sub["department"], time_limit=sub["time_limit"],
                                 keywords=sub.get("keywords", ""), attributes=tuple(attrs))
    if not out:
        raise ValueError("the categories file defines no subclass")
    return out


def categories_file() -> Path:
    return Path(os.environ.get("GIS_CATEGORIES_FILE", DEFAULT_FILE))


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, Category]:
    return from_dict(tomllib.loads(Path(path).read_text(encoding="utf-8")))


# The file's mtime is looked at most once per RECHECK_S per path (a request asks several
# times; a stat each time showed in the intake profile).
RECHECK_S = 1.0
_checked: dict[str, tuple[float, dict[str, Category]]] = {}


def load(path: str | Path | None = None) -> dict[str, Category]:
    key = str(path) if path else os.environ.get("GIS_CATEGORIES_FILE", str(DEFAULT_FILE))
    hit = _checked.get(key)
    now = monotonic()
    if hit is not None and now - hit[0] < RECHECK_S:
        return hit[1]
    table = _load(key, Path(key).stat().st_mtime)
    _checked[key] = (now, table)
    return table

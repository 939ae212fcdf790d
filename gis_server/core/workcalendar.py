"""Working calendar: deadlines in working hours and working days (pure functions).

A :class:`WorkCalendar` knows the time zone, the daily working periods (e.g. 08:30–12:00 and
13:30–17:30), the weekend, public holidays and make-up working days (调休: a Saturday that is
a working day). It is read from ``data/calendar.toml`` (``GIS_CALENDAR_FILE`` overrides), a
file a city edits each year when the State Council publishes the holiday schedule.

Rules (documented, tested):

* ``add(start, n, "h")`` — the instant when ``n`` working hours have elapsed since ``start``,
  counting only time inside working periods of working days. A start outside working time
  starts counting at the next working period.
* ``add(start, n, "d")`` — the end of the ``n``-th working day *after* the day of ``start``
  (the dispatch day does not count), i.e. "within 3 working days" of a Friday dispatch ends on
  Wednesday at the close of the last working period.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from time import monotonic
from zoneinfo import ZoneInfo

from ..pgcluster import PROJECT_ROOT

DEFAULT_FILE = PROJECT_ROOT / "data" / "calendar.toml"
UNITS = {"h": "working hours", "d": "working days"}


@dataclass(frozen=True)
class WorkCalendar:
    tz: ZoneInfo = ZoneInfo("Asia/Shanghai")
    periods: tuple[tuple[time, time], ...] = ((time(8, 30), time(12, 0)),
                                              (time(13, 30), time(17, 30)))
    weekend: frozenset[int] = frozenset({5, 6})  # Monday = 0
    holidays: frozenset[date] = field(default_factory=frozenset)
    workdays: frozenset[date] = field(default_factory=frozenset)  # make-up working days

    def is_working_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() not in self.weekend and day not in self.holidays

    @property
    def hours_per_day(self) -> float:
        return sum((_minutes(b) - _minutes(a)) for a, b in self.periods) / 60

    def _local(self, at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("aware datetimes only")
        return at.astimezone(self.tz)

    def _periods_from(self, local: datetime):
        """Working periods (start, end) as aware local datetimes, from ``local``'s day on."""
        day = local.date()
        for _ in range(3700):  # ten years: a calendar with no working day is refused
            if self.is_working_day(day):
                for a, b in self.periods:
                    yield (datetime.combine(day, a, self.tz), datetime.combine(day, b, self.tz))
            day += timedelta(days=1)
        raise ValueError("the calendar has no working time in the next ten years")

    def add_hours(self, start: datetime, hours: float) -> datetime:
        if hours < 0:
            raise ValueError("hours must not be negative")
        local = self._local(start)
        left = timedelta(hours=hours)
        for a, b in self._periods_from(local):
            if b <= local:
                continue
            begin = max(a, local)
            if begin + left <= b:
                return (begin + left).astimezone(start.tzinfo)
            left -= b - begin
        raise AssertionError("unreachable")

    def add_days(self, start: datetime, days: int) -> datetime:
        if days < 0:
            raise ValueError("days must not be negative")
        day = self._local(start).date()
        if days == 0:
            day -= timedelta(days=1)  # "0 days": the end of the current (or next) working day
            days = 1
        while days:
            day += timedelta(days=1)
            if self.is_working_day(day):
                days -= 1
        end = datetime.combine(day, self.periods[-1][1], self.tz)
        return end.astimezone(start.tzinfo)

    def add(self, start: datetime, amount: float, unit: str) -> datetime:
        if unit == "h":
            return self.add_hours(start, amount)
        if unit == "d":
            return self.add_days(start, int(amount))
        raise ValueError(f"unit must be 'h' or 'd', got {unit!r}")

    def working_hours_between(self, start: datetime, end: datetime) -> float:
        """Working hours inside [start, end) (0 when end ≤ start)."""
        if end <= start:
            return 0.0
        local, stop = self._local(start), self._local(end)
        total = timedelta()
        for a, b in self._periods_from(local):
            if a >= stop:
                break
            lo, hi = max(a, local), min(b, stop)
            if hi > lo:
                total += hi - lo
        return total.total_seconds() / 3600


def parse_limit(value: str) -> tuple[float, str]:
    """``"4h"`` → (4, "h"); ``"20d"`` → (20, "d")."""
    value = str(value).strip()
    unit = value[-1:]
    if unit not in UNITS:
        raise ValueError(f"time limit {value!r} must end in h (working hours) or d (days)")
    amount = float(value[:-1])
    if amount <= 0:
        raise ValueError(f"time limit {value!r} must be positive")
    return amount, unit


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _clock(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def from_dict(spec: dict) -> WorkCalendar:
    periods = []
    for item in spec.get("working_hours", ["08:30-12:00", "13:30-17:30"]):
        a, b = (x.strip() for x in item.split("-"))
        periods.append((_clock(a), _clock(b)))
    periods.sort()
    if not periods or any(a >= b for a, b in periods) or any(
            periods[i][1] > periods[i + 1][0] for i in range(len(periods) - 1)):
        raise ValueError("working_hours must be ordered, non-overlapping HH:MM-HH:MM periods")
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    weekend = frozenset(names.index(d.lower()[:3]) for d in spec.get("weekend", ["sat", "sun"]))
    return WorkCalendar(
        tz=ZoneInfo(spec.get("timezone", "Asia/Shanghai")), periods=tuple(periods),
        weekend=weekend,
        holidays=frozenset(date.fromisoformat(str(d)) for d in spec.get("holidays", [])),
        workdays=frozenset(date.fromisoformat(str(d)) for d in spec.get("workdays", [])))


def calendar_file() -> Path:
    return Path(os.environ.get("GIS_CALENDAR_FILE", DEFAULT_FILE))


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> WorkCalendar:
    return from_dict(tomllib.loads(Path(path).read_text(encoding="utf-8")))


# The file is looked at most once per RECHECK_S per path (see categories.load).
RECHECK_S = 1.0
_checked: dict[str, tuple[float, WorkCalendar]] = {}


def load(path: str | Path | None = None) -> WorkCalendar:
    """The calendar file (re-read when it changes); the built-in default when there is none."""
    key = str(path) if path else os.environ.get("GIS_CALENDAR_FILE", str(DEFAULT_FILE))
    hit = _checked.get(key)
    now = monotonic()
    if hit is not None and now - hit[0] < RECHECK_S:
        return hit[1]
    p = Path(key)
    cal = _load(key, p.stat().st_mtime) if p.exists() else WorkCalendar()
    _checked[key] = (now, cal)
    return cal

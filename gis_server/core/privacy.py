"""Masking of personal data (names, national ID numbers, phones, exact addresses).

Who may see what unmasked is decided by access control; these functions only transform values.
"""
from __future__ import annotations

import re


def mask_name(name: str | None) -> str | None:
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id_number(value: str | None) -> str | None:
    """``110108199001011234`` → ``110***********1234`` (as the issue and common practice show)."""
    if not value:
        return value
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_phone(value: str | None) -> str | None:
    if not value:
        return value
    digits = re.sub(r"\D", "", value)
    if len(digits) < 7:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def mask_room(value: str | None) -> str | None:
    return None if value is None else "***"


PERSON_MASKS = {"name": mask_name, "id_number": mask_id_number, "phone": mask_phone}
HOUSEHOLD_MASKS = {"head_name": mask_name, "room": mask_room}


def mask_record(record: dict, masks: dict) -> dict:
    return {k: (masks[k](v) if k in masks else v) for k, v in record.items()}


# Fields that identify a person or their exact home; "removed" mode drops them entirely.
PERSONAL_FIELDS = {"name", "id_number", "phone", "head_name", "room", "birth_date"}
ALL_MASKS = {**PERSON_MASKS, **HOUSEHOLD_MASKS, "birth_date": lambda v: v and v[:4]}


def apply_personal_mode(record: dict, mode: str) -> dict:
    """``unmasked`` → as is; ``masked`` → masked values; ``removed`` → no personal field."""
    if mode == "unmasked":
        return dict(record)
    if mode == "masked":
        return mask_record(record, ALL_MASKS)
    return {k: v for k, v in record.items() if k not in PERSONAL_FIELDS}

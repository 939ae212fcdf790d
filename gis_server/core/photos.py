"""Incident photos on disk, content-addressed by SHA-256 (``data/uploads/incidents/ab/<sha>.jpg``).

A photo is checked (size, a real JPEG/PNG/GIF/WebP that Pillow can decode) and written to a
temporary file first; it is moved to its final name only after the database transaction that
references it has committed, so a failed intake leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from ..errors import APIError, bad_param
from ..pgcluster import PROJECT_ROOT

FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}


def upload_dir() -> Path:
    from flask import current_app, has_app_context
    configured = current_app.config.get("UPLOAD_DIR") if has_app_context() else None
    return Path(configured or os.environ.get("GIS_UPLOAD_DIR", PROJECT_ROOT / "data" / "uploads"))


def max_bytes() -> int:
    return int(os.environ.get("GIS_MAX_PHOTO_BYTES", 10 * 1024 * 1024))


def check(data: bytes, field: str = "photo") -> str:
    """The file extension of a valid image, else 4xx naming ``field``."""
    if len(data) > max_bytes():
        raise APIError(413, "payload_too_large",
                       f"{field} must be at most {max_bytes():,} bytes", field=field)
    if not data:
        raise bad_param(field, f"{field} is empty")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise bad_param(field, f"{field} is not an image (JPEG, PNG, GIF or WebP)") from None
    if kind not in FORMATS:
        raise bad_param(field, f"{field} must be JPEG, PNG, GIF or WebP, got {kind}")
    return FORMATS[kind]


class StagedPhoto:
    def __init__(self, data: bytes, ext: str):
        self.sha256 = hashlib.sha256(data).hexdigest()
        root = upload_dir()
        rel = Path("incidents") / self.sha256[:2] / f"{self.sha256}.{ext}"
        self.final = root / rel
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.final.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.tmp: Path | None = Path(tmp)
        self.info = {"path": str(rel), "sha256": self.sha256}

    def commit(self) -> None:
        if self.tmp is not None:
            os.replace(self.tmp, self.final)
            self.tmp = None

    def discard(self) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def stage(data: bytes, field: str = "photo") -> StagedPhoto:
    return StagedPhoto(data, check(data, field))

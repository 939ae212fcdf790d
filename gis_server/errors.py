"""JSON errors for API clients: every 4xx names the field and the reason; no 500 leaks detail.

Raise :class:`APIError` anywhere (core functions included: it has no Flask dependency) and the
handler registered in ``create_app`` turns it into ``{"error": ..., "message": ..., "field": ...}``.
"""
from __future__ import annotations

import logging

from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None,
                 **extra):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        self.extra = extra

    def to_dict(self) -> dict:
        body = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


def bad_param(field: str, message: str) -> APIError:
    return APIError(400, "invalid_parameter", message, field=field)


def not_found(what: str, key) -> APIError:
    return APIError(404, "not_found", f"{what} {key!r} not found")


def register(app) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return exc.to_dict(), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        body = {"error": (exc.name or "error").lower().replace(" ", "_"),
                "message": exc.description}
        response = exc.get_response()
        response.data = app.json.dumps(body)
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # Never leak a stack trace or SQL to a client; the log keeps the detail.
        log.exception("unhandled error")
        return {"error": "internal_error", "message": "internal server error"}, 500

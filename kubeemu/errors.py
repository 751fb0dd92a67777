"""``ApiError``: a failure answered with a ``Status`` object, as a real API server does."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError"]

_REASONS = {
    400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict",
    410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError",
}


class ApiError(Exception):
    """An API failure: ``code`` (HTTP status), ``reason`` (``NotFound``, ``AlreadyExists``...)."""

    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object for the response body or a watch ``ERROR`` event."""
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    # Constructors matching the messages of a real API server -----------------------

    @classmethod
    def not_found(cls, qualified: str, name: str) -> "ApiError":
        return cls(404, '%s "%s" not found' % (qualified, name), "NotFound",
                   {"name": name, "kind": qualified.split(".")[0],
                    **({"group": qualified.split(".", 1)[1]} if "." in qualified else {})})

    @classmethod
    def already_exists(cls, qualified: str, name: str) -> "ApiError":
        return cls(409, '%s "%s" already exists' % (qualified, name), "AlreadyExists",
                   {"name": name, "kind": qualified.split(".")[0]})

    @classmethod
    def conflict(cls, qualified: str, name: str, why: str) -> "ApiError":
        return cls(409, 'Operation cannot be fulfilled on %s "%s": %s' % (qualified, name, why),
                   "Conflict", {"name": name, "kind": qualified.split(".")[0]})

    @classmethod
    def invalid(cls, kind: str, name: str, causes: list[tuple[str, str]]) -> "ApiError":
        """``causes`` are ``(field, message)`` pairs."""
        text = ", ".join("%s: %s" % (field, msg) for field, msg in causes)
        return cls(422, '%s "%s" is invalid: %s' % (kind, name, text), "Invalid",
                   {"name": name, "kind": kind,
                    "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field}
                               for field, msg in causes]})

    @classmethod
    def bad_request(cls, message: str) -> "ApiError":
        return cls(400, message, "BadRequest")

    @classmethod
    def expired(cls, message: str) -> "ApiError":
        return cls(410, message, "Expired")

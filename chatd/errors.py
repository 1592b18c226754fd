"""Domain errors: raised low, translated once per edge (HTTP, CLI, socket)."""

from __future__ import annotations


class ChatdError(Exception):
    """A failure the caller can understand; `code` and `status` follow the contract.

    `field` names the input it concerns ("username", "slug"...), so a form can show the
    sentence next to that field; None when it concerns the request as a whole."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadInput(ChatdError):
    code, status = "bad_request", 400


class Unauthorized(ChatdError):
    code, status = "unauthorized", 401


class Forbidden(ChatdError):
    code, status = "forbidden", 403


class NotFound(ChatdError):
    code, status = "not_found", 404


class Conflict(ChatdError):
    code, status = "conflict", 409


class RequestTimeout(ChatdError):
    """The client did not send its request body within body_timeout_seconds."""

    code, status = "request_timeout", 408


class MisdirectedRequest(ChatdError):
    """The request names a host that is not one of public_url's."""

    code, status = "misdirected_request", 421


class TooLarge(ChatdError):
    code, status = "too_large", 413


class RateLimited(ChatdError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after: float = 1.0, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class StorageUnavailable(ChatdError):
    """The database refused a write (disk full, read-only): nothing was stored."""

    code, status = "storage_unavailable", 503


class SchemaTooNew(ChatdError):
    code, status = "schema_too_new", 500

"""Errors as RFC 9457 problem details: `application/problem+json` with a stable `type`.

Every error the gateway returns is a `Problem`; the `type` values below are part of the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://image-classification-api.dev/problems/"

# slug → (HTTP status, title)
CATALOGUE: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "Malformed HTTP request"),
    "request-head-too-large": (431, "Request head too large"),
    "unauthorized": (401, "Missing or invalid API key"),
    "rate-limited": (429, "Too many requests"),
    "request-timeout": (408, "Request body too slow"),
    "payload-too-large": (413, "Upload too large"),
    "image-too-large": (413, "Image dimensions too large"),
    "unsupported-media-type": (415, "Unsupported image format"),
    "invalid-image": (422, "The image cannot be decoded"),
    "invalid-request": (422, "Invalid request"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "output-unavailable": (501, "The served model does not give this output"),
    "model-unavailable": (503, "The model is not ready"),
    "server-busy": (503, "The server is busy"),
    "draining": (503, "The gateway is draining"),
    "upstream-timeout": (504, "The model did not answer in time"),
    "upstream-error": (502, "The model server failed"),
    "internal-error": (500, "Internal error"),
}


class Problem(Exception):
    """Raise to answer with a problem+json body. `extra` members are added to the body."""

    def __init__(self, slug: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.slug = slug
        self.status, self.title = CATALOGUE[slug]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, request_id: str | None) -> dict[str, Any]:
        return {
            "type": TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": request_id,
            **self.extra,
        }

    def response(self, request_id: str | None) -> JSONResponse:
        return JSONResponse(self.body(request_id), self.status, headers=self.headers, media_type=PROBLEM_JSON)


ErrorShape = Callable[[Problem, str | None], Response]  # a protocol's error answer: (problem, request id) → it


def problem_response(problem: Problem, request_id: str | None) -> Response:
    """The /v1 API's error shape (and the default for every path that declares no other: gateway/errors.py)."""
    return problem.response(request_id)


def problem_schema() -> dict[str, Any]:
    """OpenAPI schema of a problem body, for the documented error responses."""
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail", "request_id"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "request_id": {"type": ["string", "null"]},
            "code": {"type": "string"},
        },
    }

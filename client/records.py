"""The results imgcls writes, one record per file: what the gateway answered for it, or why it failed.

A record is one JSONL line as it is (the CSV writer takes its top class and error text; the .npy writer its
embedding). An error is the server's problem (`type`, `detail`, `status`, and the per-image `code` when it
gave one) or one the client assigns itself, typed `client/<kind>` (no answer, an unreadable file, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NotRequired, TypedDict

from client.wire import Ranked

CLIENT_TYPE = "client/"  # prefix of the error types the client itself assigns (no server answer)


class Error(TypedDict):
    type: str | None
    detail: str | None
    status: int | None
    code: NotRequired[str]


class Record(TypedDict):
    path: str
    status: Literal["ok", "failed"]
    predictions: NotRequired[list[Ranked]]  # imgcls classify
    embedding: NotRequired[str]  # imgcls embed: base64 of float32 little-endian
    error: NotRequired[Error]
    request_id: str | None
    explanation: NotRequired[str]  # --explain: where the overlay was written
    explanation_error: NotRequired[Error]  # --explain: why there is none


def client_error(kind: str, detail: str, status: int | None = None) -> Error:
    return {"type": CLIENT_TYPE + kind, "detail": detail, "status": status}


def error_of(problem: Mapping[str, object], status: int | None = None) -> Error:
    """The error of a record from a problem (or from what a batch result gave in place of one)."""
    kind, detail, code = problem.get("type"), problem.get("detail"), problem.get("code")
    own_status = problem.get("status", status)
    error: Error = {
        "type": kind if isinstance(kind, str) else None,
        "detail": detail if isinstance(detail, str) else None,
        "status": own_status if isinstance(own_status, int) else None,
    }
    if isinstance(code, str):
        error["code"] = code
    return error


def slug(error: Error) -> str:
    """The last part of the error's type: `invalid-image` for `.../problems/invalid-image`."""
    return (error["type"] or "").rstrip("/").rsplit("/", 1)[-1]


def failed(path: str, error: Error, request_id: str | None = None) -> Record:
    return {"path": path, "status": "failed", "error": error, "request_id": request_id}

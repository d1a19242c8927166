"""Every gateway setting, typed, in one place. Each is overridable by an env var `GATEWAY_<NAME>`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.bounds import MAX_PIXELS
from contract.wire import MODEL_NAME

MiB = 1024 * 1024
ENVELOPE_BYTES = 64 * 1024  # allowed on top of the image limits for what wraps them: multipart parts, v2's JSON


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=None, extra="ignore")

    # This server
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 only inside a container")
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive before the connection is closed")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="largest request head accepted")
    header_timeout_s: float = Field(10.0, gt=0, description="time a client has to send a complete request head")
    linger_s: float = Field(
        5.0, gt=0, description="after an answer given before the upload ended, time the client has to finish sending"
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        description="on SIGTERM or SIGUSR1, time /readyz answers 503 `draining` (while everything else is served)"
        " before a SIGTERM stops the gateway; the load balancer's time to stop sending",
    )

    # Upstream TorchServe
    inference_url: str = Field("http://127.0.0.1:8080", description="TorchServe inference API")
    management_url: str = Field("http://127.0.0.1:8081", description="TorchServe management API (internal only)")
    key_file: Path = Field(Path(".run/torchserve/key_file.json"), description="TorchServe's key_file.json")
    model_name: str = Field(MODEL_NAME, description="the archive's model name in TorchServe")
    connect_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(25.0, gt=0, description="whole upstream call; below API Gateway's 29 s")
    max_connections: int = Field(
        32, ge=1, description="requests in flight to TorchServe per gateway process; keep below its job_queue_size"
    )
    queue_timeout_s: float = Field(
        1.0, gt=0, description="wait for a free upstream connection or render slot before answering 503 (overload)"
    )
    max_concurrent_renders: int = Field(
        2, ge=1, description="/v1/explain PNGs drawn at once per gateway process (each decodes the whole image)"
    )
    readiness_cache_s: float = Field(1.5, ge=0)
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503")

    # Clients
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="SHA-256 hex of accepted API keys"
    )
    api_key_hashes_file: Path | None = Field(None, description="file with one SHA-256 hex per line")
    rate_limit_rps: float = Field(200.0, gt=0, description="sustained images per second per API key")
    rate_limit_burst: int = Field(
        64, ge=1, description="bucket size per API key, in images; a request of more images than this is refused"
    )
    metrics_public: bool = Field(True, description="serve /metrics without an API key")

    # Inputs
    max_upload_bytes: int = Field(8 * MiB, ge=1024, description="per image")
    max_batch_files: int = Field(32, ge=1)
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="decoded pixel limit (decompression bombs)")
    max_side: int = Field(20_000, ge=1, description="largest accepted width or height")
    # The body budget (gateway/budget.py), set with the batch limits above: one key's share holds one full batch
    # (imgcls's defaults, 4 requests of 8 files of 8 MiB, are the same 256 MiB), the budget one and a half:
    # whatever one key holds, 128 MiB less 64 KiB stays for the others. Checked together at startup (`_budget`); the
    # reasons in docs/operations.md, "Body budget".
    max_buffered_bytes: int = Field(
        384 * MiB,
        ge=1,
        description="request bodies held in memory at once by the gateway process, all requests together; "
        "a request that would pass it gets 503 server-busy. At least max_key_buffered_bytes",
    )
    max_key_buffered_bytes: int | None = Field(
        None,
        ge=1,
        description="request bodies held at once for one API key, all its requests together; a request that would "
        "pass it gets 503 server-busy. At least (and by default) the largest batch body, max_upload_bytes x "
        "max_batch_files + 64 KiB",
    )
    body_rate_bytes_s: int = Field(
        64 * 1024,
        ge=1,
        description="slowest average rate a request body may arrive at, from its head (after body_grace_s); "
        "a body that falls behind gets 408 request-timeout and its reservation is released",
    )
    body_grace_s: float = Field(10.0, gt=0, description="time a request body has before body_rate_bytes_s applies")

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _hex(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("each API key hash must be 64 hex characters (SHA-256)")
        return [digest.lower() for digest in value]

    @model_validator(mode="after")
    def _budget(self) -> Settings:
        """A key's share holds the largest request the limits allow, and the budget holds a key's share: else
        that request could never be served."""
        if self.key_share_bytes < self.max_body_bytes:
            raise ValueError(
                f"GATEWAY_MAX_KEY_BUFFERED_BYTES ({self.key_share_bytes}) must be at least the largest "
                f"batch body, max_upload_bytes x max_batch_files + {ENVELOPE_BYTES} ({self.max_body_bytes})"
            )
        if self.max_buffered_bytes < self.key_share_bytes:
            raise ValueError(
                f"GATEWAY_MAX_BUFFERED_BYTES ({self.max_buffered_bytes}) must be at least one key's share, "
                f"GATEWAY_MAX_KEY_BUFFERED_BYTES or the largest batch body ({self.key_share_bytes})"
            )
        return self

    def all_key_hashes(self) -> list[str]:
        hashes = list(self.api_key_hashes)
        if self.api_key_hashes_file is not None:
            lines = self.api_key_hashes_file.read_text().splitlines()
            hashes += self._hex([line.strip() for line in lines if line.strip() and not line.startswith("#")])
        return hashes

    @property
    def max_batch_bytes(self) -> int:
        return self.max_upload_bytes * self.max_batch_files

    @property
    def max_body_bytes(self) -> int:
        """The largest request body the limits allow: a full batch and its envelope."""
        return self.max_batch_bytes + ENVELOPE_BYTES

    @property
    def key_share_bytes(self) -> int:
        """The bytes of request bodies one API key may have held at once (max_key_buffered_bytes, by default
        the largest body)."""
        return self.max_body_bytes if self.max_key_buffered_bytes is None else self.max_key_buffered_bytes


@lru_cache
def get_settings() -> Settings:
    return Settings()

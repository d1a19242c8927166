"""The probes and the metrics: /healthz (the process is alive), /readyz (TorchServe has a READY worker and
the gateway is not draining) and /metrics (Prometheus; open unless GATEWAY_METRICS_PUBLIC=false)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import readiness, schemas
from gateway.auth import admit
from gateway.deps import DrainDep, KeysDep, LimiterDep, MetricsDep, SettingsDep, UpstreamDep

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, summary="The gateway process is alive")
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Ready,
    responses={503: schemas.ERRORS[503]},
    summary="TorchServe has a READY worker for the model",
)
async def readyz(drain: DrainDep, upstream: UpstreamDep) -> schemas.Ready:
    readiness.refuse_while_draining(drain)
    return await readiness.ready(upstream)


async def metrics_access(
    request: Request, response: Response, settings: SettingsDep, keys: KeysDep, limiter: LimiterDep, metrics: MetricsDep
) -> None:
    if not settings.metrics_public:
        admit(request, response, keys, limiter, metrics)


@router.get("/metrics", dependencies=[Depends(metrics_access)], summary="Prometheus metrics", include_in_schema=False)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""The demo page: `GET /` and its two static files. No build step, no CDN, no external fonts.

Links are relative, so the page works under a path prefix such as an API Gateway stage (`.../api/`).
Its Content-Security-Policy (PAGE_CSP, sent with each file here) allows only the page's own script and style;
gateway/observe.py gives every other answer the API's stricter one.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.assets import STATIC

FILES = {
    "index.html": "text/html; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CONTENT = {name: (STATIC / name).read_bytes() for name in FILES}

router = APIRouter(include_in_schema=False)


def static(name: str) -> Response:
    return Response(CONTENT[name], media_type=FILES[name], headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/")
async def page() -> Response:
    return static("index.html")


@router.get("/static/demo.js")
async def script() -> Response:
    return static("demo.js")


@router.get("/favicon.ico")
async def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/demo.css")
async def style() -> Response:
    return static("demo.css")

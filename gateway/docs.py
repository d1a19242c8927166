"""`GET /docs`: Swagger UI for the live OpenAPI schema, offline. Its files come with the gateway's install
(Swagger UI 5 as packaged by fastapi-offline, pinned in pyproject.toml), never from a CDN, and each is served
under a Content-Security-Policy that allows only this origin's scripts, styles and requests. FastAPI's own
/docs and /redoc load unpinned scripts from a CDN and need inline script: both are off (gateway/main.py);
ReDoc has no replacement (it injects inline styles and runs workers from blob: URLs).
"""

from __future__ import annotations

import importlib.resources

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.assets import STATIC

SWAGGER_UI = importlib.resources.files("fastapi_offline") / "static"

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FILES = {  # path under /docs → (file, media type)
    "": (STATIC / "docs.html", "text/html; charset=utf-8"),
    "/docs.js": (STATIC / "docs.js", "text/javascript; charset=utf-8"),
    "/swagger-ui.css": (SWAGGER_UI / "swagger-ui.css", "text/css; charset=utf-8"),
    "/swagger-ui-bundle.js": (SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
}
CONTENT = {path: file.read_bytes() for path, (file, _) in FILES.items()}

router = APIRouter(prefix="/docs", include_in_schema=False)


def serve(path: str) -> None:
    async def endpoint() -> Response:
        return Response(CONTENT[path], media_type=FILES[path][1], headers={"Content-Security-Policy": DOCS_CSP})

    router.add_api_route(path, endpoint, methods=["GET"], name=f"docs{path}")


for each in FILES:
    serve(each)

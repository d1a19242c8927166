"""Headers every answer of the gateway carries, whoever writes it: the app (gateway/observe.py) or the HTTP
protocol, for what it refuses before there is a request to route (gateway/protocol.py)."""

from __future__ import annotations

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # the demo page and /docs send their own

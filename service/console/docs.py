"""``GET /docs``: Swagger UI for ``/openapi.json``, vendored (``static/vendor/swagger-ui-*``).

No inline script: the page loads the bundle and ``static/docs.js`` (its initialiser) from
'self'. Swagger UI sets inline styles from its scripts, so this page's CSP allows
``'unsafe-inline'`` styles; scripts stay ``'self'`` only. "Authorize" takes a bearer token from
``POST /api/v1/auth/login`` (the spec declares the ``bearer`` scheme).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.console.render import render
from service.console.security import DOCS_CSP

SWAGGER_UI = "vendor/swagger-ui-5.35.0"


async def swagger_ui(request: Request) -> Response:
    return render(request, "docs.html", {"swagger": SWAGGER_UI}, csp=DOCS_CSP)

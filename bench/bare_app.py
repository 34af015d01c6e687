"""The ``/health/live`` baseline: a bare Starlette app with the same body and no middleware."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def live(request: Request) -> Response:
    return JSONResponse({"status": "pass"})


app = Starlette(routes=[Route("/health/live", live, methods=["GET"])])

"""The console as its own small Starlette app, dispatched in front of the API router.

``/console/*`` (pages, actions, static assets) and ``/docs`` are HTML for people; the API router
stays JSON-only, so ``/openapi.json`` keeps describing exactly the API (and the fuzz test keeps
holding every route to the JSON error shape). ``ConsoleDispatch`` sits inside the request-context
middleware, so console requests get request ids, metrics by route template and the access log.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.console import actions, controls, docs, pages, redrives, signin
from service.console.render import STATIC
from service.console.views import console_view, error_page, too_large_page
from service.middleware import PayloadTooLarge
from service.state import AppState

GROUP = "/console/groups/{queue}/{fingerprint}/{action:str}"
QUEUE = "/console/queues/{queue}"


def console_routes() -> list[Route | Mount]:
    return [
        Route("/console", console_view(pages.overview), methods=["GET"]),
        Route("/console/live", console_view(pages.overview_live), methods=["GET"]),
        Route("/console/sign-in", signin.sign_in_form, methods=["GET"]),
        Route("/console/sign-in", signin.sign_in, methods=["POST"]),
        Route("/console/sign-out", console_view(signin.sign_out), methods=["POST"]),
        Route("/console/groups", console_view(pages.groups), methods=["GET"]),
        Route(GROUP, console_view(pages.group_confirm), methods=["GET"]),
        Route(GROUP, console_view(actions.group_action, action=True), methods=["POST"]),
        Route("/console/dlq", console_view(pages.dlq_list), methods=["GET"]),
        Route("/console/dlq/{entry_id}", console_view(pages.dlq_entry), methods=["GET"]),
        Route("/console/dlq/{entry_id}/retry", console_view(actions.retry, action=True), methods=["POST"]),
        Route(
            "/console/dlq/{entry_id}/resolve", console_view(actions.resolve, action=True), methods=["POST"]
        ),
        Route(QUEUE + "/jobs", console_view(controls.live_jobs), methods=["GET"]),
        Route(QUEUE + "/jobs/{job_id}", console_view(controls.live_job), methods=["GET"]),
        Route(QUEUE + "/jobs/{job_id}/{action}", console_view(controls.job_confirm), methods=["GET"]),
        Route(
            QUEUE + "/jobs/{job_id}/{action}",
            console_view(controls.job_action, action=True),
            methods=["POST"],
        ),
        Route(QUEUE + "/cancel", console_view(controls.bulk_confirm), methods=["GET"]),
        Route(QUEUE + "/cancel", console_view(controls.bulk_action, action=True), methods=["POST"]),
        Route(QUEUE + "/{action}", console_view(controls.queue_confirm), methods=["GET"]),
        Route(QUEUE + "/{action}", console_view(controls.queue_action, action=True), methods=["POST"]),
        Route("/console/redrives", console_view(redrives.task_list), methods=["GET"]),
        Route("/console/redrives/{task_id}", console_view(redrives.task_page), methods=["GET"]),
        Route("/console/redrives/{task_id}/progress", console_view(redrives.task_progress), methods=["GET"]),
        Route(
            "/console/redrives/{task_id}/{action:str}",
            console_view(redrives.task_action, action=True),
            methods=["POST"],
        ),
        Route("/console/audit", console_view(pages.audit_log), methods=["GET"]),
        Route("/console/cron", console_view(pages.cron), methods=["GET"]),
        Route("/console/cron/{name}/run", console_view(actions.run_cron, action=True), methods=["POST"]),
        Route("/docs", docs.swagger_ui, methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 405: "Method not allowed"}
    message = "There is no such page in the console." if exc.status_code == 404 else "Not allowed here."
    return error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), message, None)


async def _too_large(request: Request, exc: Exception) -> Response:
    return too_large_page(request)


def build_console(state: AppState) -> Starlette:
    # PayloadTooLarge is raised by the request-context middleware's receive while a handler reads a
    # chunked body; unhandled, the console app's own error middleware would answer 500 with a trace.
    app = Starlette(
        routes=console_routes(),
        exception_handlers={HTTPException: _http_error, PayloadTooLarge: _too_large},
    )
    app.state.ops = state
    return app


class ConsoleDispatch:
    """Send ``/console``, ``/console/*`` and ``/docs`` to the console app, the rest onwards."""

    def __init__(self, app: ASGIApp, *, console: ASGIApp) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/docs" or path == "/console" or path.startswith("/console/"):
                await self.console(scope, receive, send)
                return
        await self.app(scope, receive, send)

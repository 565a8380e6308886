"""The dashboard, `GET /ui/`: executions with filters and live refresh, and one
execution's DAG, timeline (critical path, speed-up), steps and cancel / re-drive /
replay, its shadows beside its answers and its flow's agreement per step; and two
executions compared (`/ui/compare/{first}/{second}`).

Served by the service itself: two Jinja2 shells, one stylesheet, one script, no build
step and nothing from a CDN. The pages read the same JSON API operators script
against (`/executions`, `/flows/{name}`), render every value as text (step outputs
are untrusted), and go out under a strict Content-Security-Policy. The pages need an
operator, like the API; the static files hold no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from service.api.operations import operator

WEB = Path(__file__).resolve().parent.parent / "web"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=WEB / "templates")  # autoescapes .html
static = StaticFiles(directory=WEB / "static")
router = APIRouter(prefix="/ui", dependencies=[Depends(operator)], include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def executions_page(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "executions.html", {"title": "Executions"}, headers=SECURITY_HEADERS
    )


@router.get("/executions/{execution_id}", response_class=HTMLResponse)
async def execution_page(request: Request, execution_id: str) -> HTMLResponse:
    context = {"title": f"Execution {execution_id[:128]}", "execution_id": execution_id[:128]}
    return templates.TemplateResponse(request, "execution.html", context, headers=SECURITY_HEADERS)


@router.get("/compare/{first}/{second}", response_class=HTMLResponse)
async def compare_page(request: Request, first: str, second: str) -> HTMLResponse:
    context = {"title": "Compare", "first": first[:128], "second": second[:128]}
    return templates.TemplateResponse(request, "compare.html", context, headers=SECURITY_HEADERS)


ui_root = APIRouter(include_in_schema=False)


@ui_root.get("/ui")
async def ui_redirect() -> RedirectResponse:
    return RedirectResponse("/ui/")

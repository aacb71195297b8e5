"""The dashboard's HTTP routes: HTML pages, the live fragment, login and logout.

Like the API's routes they only translate: read the scope, load the page's data
(:mod:`.pages`), render a template. Every response of this router, errors included, is
HTML with the security headers of :data:`.assets.SECURITY_HEADERS`.

With auth on, signing in with a project token opens a server-side session
(:meth:`stagelr_service.tokens.Tokens.open_session`): the ``stagelr_session`` cookie
(HttpOnly, SameSite=Strict, Secure over HTTPS, expiring with ``STAGELR_SESSION_SECONDS``)
holds the session's random secret, never the project token; sign-out revokes the
session in the store. Every state-changing request (sign-in, sign-out, archive, delete)
goes through :func:`.csrf.verify` first: the form's token (session-bound with a session,
double-submit without) and the request's origin; every page gets its token from
:func:`render`, and every form writes it with the templates' one helper, ``csrf_field()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..api.auth import current_scope, token_of
from ..api.errors import status_of
from ..errors import (
    InputError,
    InvalidStateError,
    NotFoundError,
    StagelrError,
    UnauthorizedError,
)
from ..settings import Settings
from ..studies import StudyService
from . import compare, csrf, pages
from .assets import SECURITY_HEADERS, asset_url
from .plots import fmt_number

__all__ = ["router"]

log = logging.getLogger("stagelr.dashboard")

_LOGIN = "/dashboard/login"
#: The session cookie: a server-side session's secret, never a project token.
SESSION_COOKIE = csrf.SESSION_COOKIE
#: Ids are 64-bit in the store: a larger one names no study (404), not a driver overflow.
_MAX_ID = 2**63 - 1


def _no_such_study(study_id: int) -> None:
    if not 0 <= study_id <= _MAX_ID:
        raise NotFoundError(f"no study {study_id}")


#: The longest schedule the dashboard writes as CSV (one row per step) in one request.
CSV_MAX_STEPS = 1_000_000


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


class _FormToken:
    """The CSRF token a page's forms carry, and whether the page has such a form."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.used = False


@pass_context
def csrf_field(context: Context) -> Markup:
    """The hidden field every state-changing form carries (the templates' one CSRF
    helper): the token :func:`render` issued for the request."""
    form: _FormToken | None = context.get("csrf_form")
    if form is None or form.token is None:
        raise RuntimeError("a form needs render(..., request=request) for its CSRF token")
    form.used = True
    return Markup(f'<input type="hidden" name="{csrf.FIELD}" value="{escape(form.token)}">')


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("stagelr_service.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        asset=asset_url,
        version=__version__,
        compare_url=compare.compare_url,
        csrf_field=csrf_field,
    )
    env.filters.update(
        num=fmt_number,
        ago=_ago,
        iso=lambda d: d.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    return env


_ENV = _environment()


def render(
    name: str, status_code: int = 200, *, request: Request | None = None, **context: Any
) -> HTMLResponse:
    """Render template ``name`` into an HTML response. With ``request``, its forms get
    the request's CSRF token (:func:`.csrf.issue`), and a page with a form sets the
    double-submit cookie when the request had none."""
    token, new_cookie = csrf.issue(request) if request is not None else (None, None)
    form = _FormToken(token)
    html = _ENV.get_template(name).render(now=datetime.now(timezone.utc), csrf_form=form, **context)
    response = HTMLResponse(html, status_code=status_code)
    if request is not None and new_cookie is not None and form.used:
        csrf.set_cookie(response, request, new_cookie)
    return response


def _error_page(status_code: int, title: str, detail: str, scope: str | None) -> HTMLResponse:
    return render(
        "error.html",
        status_code=status_code,
        title=title,
        detail=detail,
        scope_project=scope,
        auth_on=False,
    )


class _DashboardRoute(APIRoute):
    """Adds the security headers to every response and turns the errors a reader can
    cause (no such study, bad parameters) into HTML pages instead of problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except NotFoundError as exc:
                response = _error_page(404, "Not found", exc.message, None)
            except InputError as exc:
                response = _error_page(400, "Bad request", exc.message, None)
            except InvalidStateError as exc:
                response = _error_page(409, "Not possible now", exc.message, None)
            except RequestValidationError as exc:
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                response = _error_page(400, "Bad request", detail, None)
            except StagelrError as exc:  # the store away (503), and any other domain error
                status, headers = status_of(exc)
                response = _error_page(status, exc.title, exc.message, None)
                response.headers.update(headers or {})
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                response = _error_page(
                    500, "Internal error", "The server failed; its log says more.", None
                )
            response.headers.update(SECURITY_HEADERS)
            return response

        return route


router = APIRouter(route_class=_DashboardRoute, include_in_schema=False)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _service(request: Request) -> StudyService:
    service: StudyService = request.app.state.studies
    return service


def _auth_on(request: Request) -> bool:
    return _settings(request).auth != "off"


def _scope(request: Request) -> tuple[bool, str | None]:
    """``(allowed, project)``: whether the request may see the dashboard, and the one
    project it may see (None: every project). A bearer header (scripts) or the session
    cookie (a signed-in browser) opens it."""
    if not _auth_on(request):
        return True, None
    try:
        if token_of(request) is not None:
            return True, current_scope(request).project
        secret = request.cookies.get(SESSION_COOKIE)
        return True, request.app.state.tokens.session_project(
            secret, _settings(request).session_seconds
        )
    except UnauthorizedError:
        return False, None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{_LOGIN}?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    # Only a path of the dashboard: never an open redirect to another site.
    if target and target.startswith("/dashboard") and not target.startswith("//"):
        return target
    return "/dashboard"


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
def study_list(
    request: Request,
    sort: str = "updated",
    order: str = "desc",
    status: str | None = None,
    page: int = 1,
    per_page: int = 50,
    q: str | None = None,
    archived: bool = False,
    deleted: int | None = None,
    family: str | None = None,
) -> Response:
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    query = pages.ListQuery(
        sort=sort,
        order=order,
        status=status or None,
        page=page,
        per_page=per_page,
        q=(q or "").strip() or None,
        archived=archived,
        family=family or None,
    )
    listing = pages.load_list(_service(request), _settings(request).lease_seconds, project, query)
    return render(
        "list.html",
        deleted=deleted,
        max_compare=compare.MAX_STUDIES,
        listing=listing,
        sorts=pages.SORTS,
        statuses=pages.STATUSES,
        scope_project=project,
        auth_on=_auth_on(request),
        request=request,
    )


@router.get("/dashboard/studies/{study_id}")
def study_page(request: Request, study_id: int) -> Response:
    _no_such_study(study_id)
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    page = pages.load_study(_service(request), _settings(request).lease_seconds, project, study_id)
    return render(
        "study.html", page=page, scope_project=project, auth_on=_auth_on(request), request=request
    )


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:4096].decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body).items()}


@router.post("/dashboard/studies/{study_id}/archive")
async def archive(request: Request, study_id: int) -> Response:
    """Archive the study, or bring it back (``archived=0``): a form of the study page."""
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    form = await _form(request)
    csrf.verify(request, form)
    archived = form.get("archived", "1") != "0"
    await run_in_threadpool(_service(request).archive_study, study_id, archived, scope=project)
    return RedirectResponse(f"/dashboard/studies/{study_id}", status_code=303)


@router.get("/dashboard/studies/{study_id}/delete")
def delete_form(request: Request, study_id: int) -> Response:
    """Ask before deleting: the confirmation page, whose form POSTs the deletion."""
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    lease = _settings(request).lease_seconds
    page = pages.load_summary(_service(request), lease, project, study_id)
    return render(
        "delete.html",
        summary=page,
        status=pages.shown_status(page),
        scope_project=project,
        auth_on=_auth_on(request),
        request=request,
    )


@router.post("/dashboard/studies/{study_id}/delete")
async def delete(request: Request, study_id: int) -> Response:
    """Delete the study for good (the confirmation page's form)."""
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    csrf.verify(request, await _form(request))
    await run_in_threadpool(_service(request).delete_study, study_id, scope=project)
    return RedirectResponse(f"/dashboard?deleted={study_id}", status_code=303)


@router.get("/dashboard/compare")
def compare_page(request: Request) -> Response:
    """Studies side by side: ``?id=3&id=7`` (the selection is the URL)."""
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    ids = compare.parse_ids(request.query_params.getlist("id"))
    page = compare.load_compare(_service(request), project, ids)
    return render(
        "compare.html",
        page=page,
        scope_project=project,
        auth_on=_auth_on(request),
        request=request,
    )


@router.get("/dashboard/studies/{study_id}/schedule.{fmt}")
def schedule_download(request: Request, study_id: int, fmt: str) -> Response:
    """The study's schedule file (as ``GET /v1/studies/{id}/schedule``, or its CSV), for
    the page's download links: the dashboard's login cookie opens it."""
    allowed, project = _scope(request)
    if not allowed:
        return _to_login(request)
    if fmt not in ("json", "csv"):
        raise NotFoundError(f"no schedule format {fmt!r}: use schedule.json or schedule.csv")
    schedule = _service(request).get_schedule(study_id, scope=project)
    if fmt == "csv" and schedule.steps > CSV_MAX_STEPS:
        raise InputError(
            f"the schedule has {schedule.steps:,} steps, more than the {CSV_MAX_STEPS:,} rows "
            "a CSV download holds: take schedule.json (piecewise), or "
            "`stagelr schedule ID --format csv -o FILE` on the server's database"
        )
    name = f"study-{study_id}.schedule.{fmt}"
    return Response(
        schedule.dumps() if fmt == "json" else schedule.to_csv(),
        media_type="application/json" if fmt == "json" else "text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/dashboard/studies/{study_id}/live")
def study_live(request: Request, study_id: int, since: str = "") -> Response:
    """The study page's changing part, for its script to swap in: 204 while nothing
    changed since version ``since``. Headers: ``X-Stagelr-Version`` (the version to send
    next) and ``X-Stagelr-Live`` (``off`` once the study is finished: stop polling)."""
    _no_such_study(study_id)
    allowed, project = _scope(request)
    if not allowed:
        return Response(status_code=401)
    service, lease = _service(request), _settings(request).lease_seconds
    summary = pages.load_summary(service, lease, project, study_id)
    version = pages.version_of(summary)
    live = "off" if pages.shown_status(summary) in pages.FINISHED else "on"
    headers = {"X-Stagelr-Version": version, "X-Stagelr-Live": live, "Cache-Control": "no-store"}
    if since == version:
        return Response(status_code=204, headers=headers)
    page = pages.load_study(service, lease, project, study_id)
    headers["X-Stagelr-Version"] = page.version
    headers["X-Stagelr-Live"] = "on" if page.live else "off"
    response = render("_study_body.html", page=page)
    response.headers.update(headers)
    return response


@router.get(_LOGIN)
def login_form(request: Request, next: str | None = None) -> Response:
    if not _auth_on(request):
        return RedirectResponse("/dashboard", status_code=303)
    return render(
        "login.html",
        next=_safe_next(next),
        error=None,
        scope_project=None,
        auth_on=True,
        request=request,
    )


@router.post(_LOGIN)
async def login(request: Request) -> Response:
    """Check the posted token; if it is valid, open a server-side session and keep its
    secret in an HttpOnly, SameSite=Strict cookie (the page's script never sees it), then
    go where the reader was headed."""
    form = await _form(request)
    csrf.verify(request, form)
    if not _auth_on(request):
        return RedirectResponse("/dashboard", status_code=303)
    token = form.get("token", "").strip()
    target = _safe_next(form.get("next", ""))
    tokens = request.app.state.tokens
    try:
        project = await run_in_threadpool(tokens.project_of, token)
    except UnauthorizedError:
        return render(
            "login.html",
            status_code=401,
            next=target,
            error="That token is not valid (unknown or revoked).",
            scope_project=None,
            auth_on=True,
            request=request,
        )
    secret = await run_in_threadpool(tokens.open_session, project)
    log.info("dashboard session opened for project %s", project)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(_settings(request).session_seconds),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    """End the session: revoke it in the store (the cookie is then worthless, even if a
    copy survives) and clear the cookie."""
    csrf.verify(request, await _form(request))
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        await run_in_threadpool(request.app.state.tokens.close_session, secret)
    response = RedirectResponse(_LOGIN, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response

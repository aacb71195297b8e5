"""Who is asking: the project scope of a request.

With ``STAGELR_AUTH=required`` every /v1 request carries a project token as
``Authorization: Bearer <token>``, and nothing else: no cookie is a credential here, so
another site cannot make a signed-in browser act on the API (the dashboard's pages use a
session of their own, :mod:`stagelr_service.dashboard.routes`). The scope is then that
project: studies of other projects do not exist for the request (404, never 403, so ids
do not leak what exists). With ``STAGELR_AUTH=off`` the scope is every project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ..tokens import Tokens

__all__ = ["Scope", "ScopeDep", "current_scope", "token_of"]


@dataclass(frozen=True, slots=True)
class Scope:
    """The projects a request may see: one project, or all of them (``project=None``)."""

    project: str | None

    def allows(self, project: str) -> bool:
        return self.project is None or self.project == project


def token_of(request: Request) -> str | None:
    """The bearer token of the request's ``Authorization`` header (cookies never count)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def current_scope(request: Request) -> Scope:
    """The request's scope; raises UnauthorizedError (401) when auth is on and no valid
    token came with it."""
    if request.app.state.settings.auth == "off":
        return Scope(project=None)
    tokens: Tokens = request.app.state.tokens
    return Scope(project=tokens.project_of(token_of(request)))


async def _scope_dependency(request: Request) -> Scope:
    """:func:`current_scope` as the API's dependency. FastAPI runs a plain ``def``
    dependency in its thread pool, a hop to a worker thread and back for every request;
    this answers on the event loop when no store read is needed (auth off, or a token
    checked within the cache's seconds) and goes to the pool only when one is."""
    if request.app.state.settings.auth == "off":
        return _EVERY_PROJECT
    tokens: Tokens = request.app.state.tokens
    project = tokens.cached_project(token_of(request))
    if project is not None:
        return Scope(project=project)
    return await run_in_threadpool(current_scope, request)


_EVERY_PROJECT = Scope(project=None)

ScopeDep = Annotated[Scope, Depends(_scope_dependency)]

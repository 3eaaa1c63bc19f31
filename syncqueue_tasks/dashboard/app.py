"""The dashboard's Starlette application: routes, templates, the counter sampler.

Server-rendered HTML (Jinja2) with htmx for the overview's self-refresh; htmx is shipped in
``static/`` (nothing is loaded from the internet) and no page needs any other JavaScript.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from syncqueue_tasks.dashboard import failed, pages, rates
from syncqueue_tasks.dashboard.auth import LoginLimiter, SessionStore
from syncqueue_tasks.dashboard.guard import Guard, csrf_protected
from syncqueue_tasks.dashboard.templating import templates

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DashboardConfig:
    """How one dashboard server behaves."""

    password: str
    secure_cookies: bool = False
    refresh_seconds: int = 5
    login_delay_seconds: float = 0.5  # every failed login waits this long before its answer
    sample_counters: bool = True  # sample the Redis counters for the chart (rates.py)


def create_app(config: DashboardConfig) -> Starlette:
    """The dashboard as an ASGI application."""
    sessions = SessionStore()
    app = Starlette(
        routes=[
            Route("/", pages.overview),
            Route("/overview/panel", pages.overview_panel),
            Route("/login", pages.login_form, methods=["GET"]),
            Route("/login", csrf_protected(pages.login), methods=["POST"]),
            Route("/logout", csrf_protected(pages.logout), methods=["POST"]),
            Route("/failed", failed.failed_list),
            Route("/failed/confirm", csrf_protected(failed.confirm), methods=["POST"]),
            Route("/failed/apply", csrf_protected(failed.apply), methods=["POST"]),
            Route("/record", pages.record),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Guard, sessions=sessions, secure_cookies=config.secure_cookies)],
        lifespan=_sampler if config.sample_counters else None,
    )
    app.state.config = config
    app.state.sessions = sessions
    app.state.limiter = LoginLimiter()
    app.state.templates = templates()
    return app


@contextlib.asynccontextmanager
async def _sampler(app: Starlette) -> AsyncIterator[None]:
    """Sample the Redis counters every ``rates.SAMPLE_SECONDS`` while the server runs."""

    async def loop() -> None:
        while True:
            await run_in_threadpool(rates.sample, time.time())
            await asyncio.sleep(rates.SAMPLE_SECONDS)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

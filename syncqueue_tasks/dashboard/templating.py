"""Rendering the dashboard's templates (Jinja2, autoescaped) and one-time notices."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from syncqueue_tasks.dashboard.guard import session_of

TEMPLATES = Path(__file__).resolve().parent / "templates"


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` with the session's CSRF token and its one-time notice."""
    session = request.state.session
    notice = None
    if session is not None:
        notice, session.notice = session.notice, None
    html = request.app.state.templates.get_template(name).render(
        request=request,
        csrf_token=session.csrf_token if session is not None else "",
        logged_in=session is not None and session.authenticated,
        notice=notice,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def notify(request: Request, message: str) -> None:
    """Show ``message`` once, on the next page this session sees."""
    session_of(request).notice = message


def templates() -> jinja2.Environment:
    """The Jinja2 environment of the package's templates (autoescaped, strict)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
    return env


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

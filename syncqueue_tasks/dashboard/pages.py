"""The overview, record and login pages.

GET handlers are plain functions: Starlette runs them in its thread pool, where the
database calls may block.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from syncqueue_tasks.celery.verify import last_result
from syncqueue_tasks.counters import read_counters
from syncqueue_tasks.dashboard import charts, queries, rates
from syncqueue_tasks.dashboard.auth import password_matches
from syncqueue_tasks.dashboard.guard import form_text
from syncqueue_tasks.dashboard.templating import render
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue
from syncqueue_tasks.writers.verify_compare import Kind

log = logging.getLogger(__name__)

CHART_SERIES = ("completed", "retried", "failed")
HISTORY_LIMIT = 1000
MAX_MODEL_LENGTH = 64
SHEET_FINDINGS_SHOWN = 50  # findings listed per model on the Sheet page


def overview(request: Request) -> Response:
    """The overview page; its panel refreshes itself through htmx."""
    return render(request, "overview.html", **_overview(request))


def overview_panel(request: Request) -> Response:
    """The overview's panel alone (what the htmx poll swaps in)."""
    return render(request, "_overview_panel.html", **_overview(request))


def record(request: Request) -> Response:
    """Search by model and record id (query string: identifiers only), and the history."""
    model = request.query_params.get("model", "").strip()
    record_id = request.query_params.get("record_id", "")
    error, record, changes = None, None, None
    longest = get_settings().limits.max_record_id_length
    if model or record_id:
        if not model or len(model) > MAX_MODEL_LENGTH:
            error = f"model: give a model name of at most {MAX_MODEL_LENGTH} characters"
        elif not record_id.strip() or len(record_id) > longest:
            error = f"record id: give the record's id (at most {longest} characters)"
        else:
            record = queue.get_record(model, record_id, limit=HISTORY_LIMIT)
            changes = [] if record is None else [queries.change_view(c) for c in record.changes]
    return render(
        request,
        "record.html",
        status=400 if error else 200,
        models=sorted(get_settings().limits.models),
        model=model,
        record_id=record_id,
        record=record,
        changes=changes,
        limit=HISTORY_LIMIT,
        now=datetime.now(UTC),
        error=error,
    )


def sheet(request: Request) -> Response:
    """The latest verify report (``syncqueue verify``, or beat's): per model the rows and
    records compared, the findings per kind and the first findings (ids and field names,
    never values)."""
    result = last_result()
    finished = None
    if result is not None and result.get("finished_at"):
        finished = datetime.fromtimestamp(float(result["finished_at"]), UTC)
    return render(
        request,
        "sheet.html",
        result=result,
        finished=finished,
        shown=SHEET_FINDINGS_SHOWN,
        kinds=[kind.value for kind in Kind],
    )


def login_form(request: Request) -> Response:
    """The login page (a visitor already logged in goes on to ``next``)."""
    target = _safe_next(request.query_params.get("next"))
    session = request.state.session
    if session is not None and session.authenticated:
        return RedirectResponse(target, status_code=303)
    return render(request, "login.html", next=target, error=None)


async def login(request: Request, form: FormData) -> Response:
    """Check the password; on success replace the session with a logged-in one."""
    state = request.app.state
    client = request.client.host if request.client else "unknown"
    target = _safe_next(form_text(form.get("next")))
    wait = state.limiter.retry_after(client)
    if wait > 0:
        response = render(
            request, "login.html", status=429, next=target,
            error=f"Too many failed logins: try again in {math.ceil(wait)} s.",
        )  # fmt: skip
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if not password_matches(form_text(form.get("password")), state.config.password):
        state.limiter.failed(client)
        log.warning("dashboard: failed login from %s", client)
        await asyncio.sleep(state.config.login_delay_seconds)
        return render(request, "login.html", status=401, next=target, error="Wrong password.")
    state.sessions.end(request.state.session)
    request.state.session = state.sessions.new(authenticated=True)
    log.info("dashboard: login from %s", client)
    return RedirectResponse(target, status_code=303)


async def logout(request: Request, form: FormData) -> Response:
    """End the session."""
    request.app.state.sessions.end(request.state.session)
    request.state.session = None
    return RedirectResponse("/login", status_code=303)


def _overview(request: Request) -> dict[str, Any]:
    now = time.time()
    recent = rates.rates(now)
    by_model = queries.items_by_model()
    oldest = min((m.oldest_pending_at for m in by_model if m.oldest_pending_at), default=None)
    return {
        "now": datetime.fromtimestamp(now, UTC),
        "refresh": request.app.state.config.refresh_seconds,
        "by_model": by_model,
        "oldest_pending_at": oldest,
        "activity": queries.activity(),
        "counters": read_counters(),
        "last_hour": {name: recent.last_hour(name) for name in recent.per_minute},
        "chart": charts.line_chart(
            {name: recent.per_minute[name] for name in CHART_SERIES},
            {0: "60 min ago", 29: "30 min ago", rates.WINDOW_MINUTES - 1: "1 min ago"},
        ),
        "sample_seconds": rates.SAMPLE_SECONDS,
    }


def _safe_next(target: str | None) -> str:
    """Only a path on this server (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target

"""The Failed page: dead letters, and retry or discard with a confirmation step.

Retry and discard take two POSTs. The first (``/failed/confirm``) picks the items (one, a
selection, or all of a filter), shows what will happen and pins exactly those items behind a
one-time token; the second (``/failed/apply``) acts on them through ``queue.retry_failed`` /
``queue.discard_failed``. Items that stopped being FAILED in between are left alone (both
functions touch only FAILED rows); items that became FAILED in between are not included.
A confirmation used once, or older than ten minutes, is refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from syncqueue_tasks.core.errors import ValidationError, sanitize_error
from syncqueue_tasks.core.validation import validate_item_id
from syncqueue_tasks.dashboard import queries
from syncqueue_tasks.dashboard.guard import form_text, refuse, session_of
from syncqueue_tasks.dashboard.templating import notify, render
from syncqueue_tasks.store import queue

log = logging.getLogger(__name__)

LIST_LIMIT = 200
MAX_PER_ACTION = 10_000
SHOWN_ON_CONFIRMATION = 50
ACTIONS = ("retry", "discard")


def failed_list(request: Request) -> Response:
    """FAILED items, newest first, filtered by model; with their sanitized last error."""
    model = request.query_params.get("model") or None
    items = queue.list_failed(model=model, limit=LIST_LIMIT)
    for item in items:
        item["last_error"] = sanitize_error(item["last_error"]) if item["last_error"] else None
    counts = {c.model: c.failed for c in queries.items_by_model() if c.failed}
    return render(
        request,
        "failed.html",
        items=items,
        model=model,
        counts=counts,
        total=counts.get(model, 0) if model else sum(counts.values()),
        limit=LIST_LIMIT,
    )


async def confirm(request: Request, form: FormData) -> Response:
    """Show what a retry or discard would do, with the one-time token that does it."""
    action = form.get("action")
    if action not in ACTIONS:
        return refuse(400, "unknown action")
    model = form_text(form.get("model")) or None
    try:
        ids = None if form.get("scope") == "filter" else _ids(form)
    except ValidationError as exc:
        return refuse(400, str(exc))
    if ids == []:
        notify(request, "Select at least one item first.")
        return _back(model)
    choice = await run_in_threadpool(
        queries.choose_failed, ids, model if ids is None else None, MAX_PER_ACTION
    )
    if not choice.items:
        notify(request, "No FAILED item matches (retried or discarded meanwhile?). Nothing done.")
        return _back(model)
    pinned = tuple(item.id for item in choice.items)
    return render(
        request,
        "confirm.html",
        action=action,
        model=model,
        choice=choice,
        by_model=sorted(Counter(item.model for item in choice.items).items()),
        shown=choice.items[:SHOWN_ON_CONFIRMATION],
        token=session_of(request).confirmation_token(str(action), pinned, model),
    )


async def apply(request: Request, form: FormData) -> Response:
    """Carry out a confirmed retry or discard, once."""
    confirmation = session_of(request).use_confirmation(form_text(form.get("confirmation")))
    if confirmation is None:
        return refuse(409, "this confirmation was already used or has expired")
    ids = list(confirmation.ids)
    if confirmation.action == "retry":
        done = await run_in_threadpool(queue.retry_failed, ids)
        if done:
            await run_in_threadpool(_kick)
        message = f"{done} FAILED item(s) back to PENDING."
    else:
        done = await run_in_threadpool(queue.discard_failed, ids)
        message = f"Deleted {done} FAILED item(s)."
    if done < len(ids):
        message += f" {len(ids) - done} were no longer FAILED and were left alone."
    log.info("dashboard: %s of %d FAILED item(s): %d done", confirmation.action, len(ids), done)
    notify(request, message)
    return _back(confirmation.model)


def _ids(form: FormData) -> list[str]:
    return [validate_item_id(i) for i in form.getlist("ids")]


def _back(model: str | None) -> Response:
    query = f"?{urlencode({'model': model})}" if model else ""
    return RedirectResponse(f"/failed{query}", status_code=303)


def _kick() -> None:
    """Ask a worker to process the queue soon (best effort; beat does it anyway)."""
    from syncqueue_tasks.celery.tasks import kick

    kick()

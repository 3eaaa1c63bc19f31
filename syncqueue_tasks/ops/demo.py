"""``syncqueue demo``: realistic changes to enqueue, and a way to follow them to the writer."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from syncqueue_tasks.settings import Settings
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.writers.loading import SHEETS, WORKBOOK, writer_spec

DEMO_MODELS = ("Request", "Operator", "Revenue")
_NAMES = ("Ann", "Bob", "Chidi", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun")
_SURNAMES = ("Lee", "Novak", "Okafor", "Silva", "Tanaka", "Weber", "Young", "Zhang")
_TITLES = ("New laptop", "VPN access", "Desk move", "Training budget", "Badge reprint")


def destination(settings: Settings, models: Sequence[str]) -> tuple[str, bool]:
    """Where the configured writer puts the demo's changes, in words; and whether that is a
    Google Sheet (someone else's data may be there: the CLI asks first)."""
    spec = writer_spec(settings)
    if spec == SHEETS:
        sheet_id = settings.sheets.spreadsheet_id
        tabs = ", ".join(settings.sheets.tabs.get(m, m) for m in models)
        url = f"https://docs.google.com/spreadsheets/d/{sheet_id}"
        return f"the Google Sheet {sheet_id} ({url}), tabs {tabs}", True
    if spec == WORKBOOK:
        return f"the local workbook {settings.destination.workbook_path.absolute()}", False
    return f"the writer {spec}", False


def demo_changes(
    count: int, models: Sequence[str] = DEMO_MODELS, rng: random.Random | None = None
) -> list[dict[str, Any]]:
    """``count`` changes for ``enqueue_many``: per record a CREATE, UPDATEs, sometimes a DELETE.

    Records get fresh ids (``demo-<tag>-<n>``); changes to different records interleave,
    changes to one record keep their order.
    """
    rng = rng or random.Random()
    tag = secrets.token_hex(3)
    n_records = max(1, min(count, -(-count // 4)))
    plans: list[list[dict[str, Any]]] = []
    for n in range(n_records):
        model = models[n % len(models)]
        record_id = f"demo-{tag}-{n + 1}"
        plans.append([_change("CREATE", model, record_id, _created(model, rng))])
    deletes = min(n_records // 5, count - n_records)
    for plan in plans[:deletes]:
        plan.append(_change("DELETE", plan[0]["model"], plan[0]["record_id"], {}))
    for _ in range(count - n_records - deletes):
        plan = rng.choice(plans)
        model, record_id = plan[0]["model"], plan[0]["record_id"]
        update = _change("UPDATE", model, record_id, _updated(model, rng))
        plan.insert(len(plan) - (plan[-1]["action"] == "DELETE"), update)
    changes: list[dict[str, Any]] = []
    while plans:
        i = rng.randrange(len(plans))
        changes.append(plans[i].pop(0))
        if not plans[i]:
            plans.pop(i)
    return changes


def follow(
    ids: Iterable[str],
    timeout: float,
    on_progress: Callable[[int], None],
    poll: float = 0.2,
) -> dict[str, int]:
    """Poll the items until each is COMPLETED or FAILED, or ``timeout`` passes.

    ``on_progress`` receives how many are done so far; returns the count per status.
    """
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        with get_engine().connect() as conn:
            counts = {r.status: int(r.n) for r in conn.execute(sql.STATUS_COUNTS, {"ids": ids})}
        done = counts.get("COMPLETED", 0) + counts.get("FAILED", 0)
        on_progress(done)
        if done >= len(ids) or time.monotonic() >= deadline:
            return counts
        time.sleep(poll)


def _change(action: str, model: str, record_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, "model": model, "record_id": record_id, "payload": payload}


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_NAMES), rng.choice(_SURNAMES)


def _created(model: str, rng: random.Random) -> dict[str, Any]:
    first, last = _person(rng)
    if model == "Request":
        return {
            "title": rng.choice(_TITLES),
            "requester": f"{first} {last}",
            "status": "open",
            "priority": rng.choice(("low", "normal", "high")),
            "amount": round(rng.uniform(20, 900), 2),
        }
    if model == "Operator":
        return {
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}@example.com",
            "shift": rng.choice(("day", "night")),
            "active": True,
        }
    if model == "Revenue":
        return {
            "month": f"2026-{rng.randint(1, 12):02d}",
            "amount": round(rng.uniform(1_000, 50_000), 2),
            "currency": rng.choice(("EUR", "USD")),
        }
    return {"name": f"{first} {last}"}


def _updated(model: str, rng: random.Random) -> dict[str, Any]:
    if model == "Request":
        return {"status": rng.choice(("in_progress", "waiting", "done"))}
    if model == "Operator":
        return {"shift": rng.choice(("day", "night")), "active": rng.random() > 0.2}
    if model == "Revenue":
        return {"amount": round(rng.uniform(1_000, 50_000), 2)}
    return {"note": f"updated {secrets.token_hex(2)}"}

"""The package's layers and the one way its imports flow (README, "Architecture").

Every module of ``syncqueue_tasks`` belongs to exactly one layer; a module may import only
from its own layer and from the layers listed as below it. Imports inside functions count
too. A new module fails this test until it is given a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "syncqueue_tasks"

#: layer -> the modules (dotted, below ``syncqueue_tasks``) or subpackages (ending in ``.*``).
LAYERS: dict[str, set[str]] = {
    # items and enums, change validation, the record fold, outcomes, ids, errors
    "core": {"ids", "errors", "models", "outcomes", "records", "validation", "__init__"},
    # configuration, the Redis connection and the counters kept there, for every layer
    "config": {"settings", "redis_client", "counters"},
    # PostgreSQL: statements, engine, schema, queue operations, synced states
    "store": {"sql", "db", "schema", "queue", "synced"},
    # the writers and the destination rules (workbook, JSON lines, Google Sheets)
    "writers": {"writers.*", "verify_compare"},
    # change capture: ORM events, triggers, backfill
    "capture": {"capture.*"},
    # Celery: the app, tasks, the enqueue path, the worker's batch, consumer, broker guard
    "celery": {
        "celery_app",
        "celery_config",
        "celery_setup",
        "tasks",
        "publishing",
        "batch",
        "consumer",
        "broker_guard",
        "invalid_messages",
        "verify",
        "verify_task",
    },
    # operators: CLI, `syncqueue run`'s stack, doctor, demo, metrics export, dashboard
    "ops": {"cli", "verify_cli", "stack", "doctor", "demo", "metrics", "dashboard.*"},
    # the local servers `syncqueue run` starts: embedded PostgreSQL/Redis, supervision, state
    "local": {"embedded", "supervise", "runstate"},
}

#: layer -> the layers it may import from (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": {"config"},
    "config": {"core"},
    "store": {"core", "config"},
    "writers": {"core", "config", "store"},
    "capture": {"core", "config", "store"},
    "celery": {"core", "config", "store", "writers"},
    "ops": {"core", "config", "store", "writers", "capture", "celery", "local"},
    "local": {"core", "config"},
}


def module_name(path: Path) -> str:
    """``syncqueue_tasks/writers/sheets/plan.py`` -> ``writers.sheets.plan``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> str | None:
    """The layer a module of the package belongs to (None: none)."""
    for layer, members in LAYERS.items():
        for member in members:
            if name == member or (member.endswith(".*") and name.startswith(member[:-1])):
                return layer
            if member.endswith(".*") and name == member[:-2]:
                return layer
    return None


def imported_modules(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (dotted, no prefix)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from syncqueue_tasks import queue` names a module; `from x.y import Name` not
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("syncqueue_tasks."):
                found.add(name.removeprefix("syncqueue_tasks."))
    return {name for name in found if _is_module(name)}


def _is_module(name: str) -> bool:
    base = PACKAGE.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


SOURCES = sorted(
    p for p in PACKAGE.rglob("*.py") if "migrations" not in p.relative_to(PACKAGE).parts
)


def test_every_module_has_exactly_one_layer() -> None:
    names = [module_name(p) for p in SOURCES]
    assert [n for n in names if layer_of(n) is None] == []
    for name in names:
        owners = [
            layer
            for layer, members in LAYERS.items()
            if any(
                name == m or (m.endswith(".*") and (name.startswith(m[:-1]) or name == m[:-2]))
                for m in members
            )
        ]
        assert len(owners) == 1, f"{name} is in {owners}"
    listed = {m for members in LAYERS.values() for m in members if not m.endswith(".*")}
    assert listed - set(names) == set(), "layers list modules that do not exist"


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_imports_flow_one_way(path: Path) -> None:
    here = layer_of(module_name(path))
    assert here is not None
    wrong = sorted(
        f"{name} ({layer_of(name)})"
        for name in imported_modules(path)
        if layer_of(name) not in {here, *ALLOWED[here]}
    )
    assert wrong == [], f"{module_name(path)} ({here}) may not import {wrong}"


def test_the_rule_catches_a_wrong_arrow(tmp_path: Path) -> None:
    """The check itself: a writer importing the Celery tasks is found."""
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from syncqueue_tasks import tasks, records\n")
    names = imported_modules(source)
    assert names == {"tasks", "records"}
    assert layer_of("tasks") not in {"writers", *ALLOWED["writers"]}

"""The package's layers and the one way its imports flow (README, "Architecture").

Every module of ``syncqueue_tasks`` lives in a layer's folder (``core/``, ``store/``, ...) or is
one of the configuration modules next to them; a module may import only from its own layer and
from the layers listed below as beneath it. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "syncqueue_tasks"

#: The modules at the package's top: configuration, the Redis connection and the counters kept
#: there (used by every layer), the package's own ``__init__`` and the aliases of former paths.
CONFIG = {"__init__", "_moved", "settings", "redis_client", "counters"}

#: layer (a folder; the dashboard is an operator's tool) -> the layers it may import from.
ALLOWED: dict[str, set[str]] = {
    "config": {"core"},
    "core": set(),
    "store": {"core", "config"},
    "writers": {"core", "config"},
    "capture": {"core", "config", "store"},
    "celery": {"core", "config", "store", "writers"},
    "local": {"core", "config"},
    "ops": {"core", "config", "store", "writers", "capture", "celery", "local"},
}
FOLDERS = {"core", "store", "writers", "capture", "celery", "local", "ops", "dashboard"}


def module_name(path: Path) -> str:
    """``syncqueue_tasks/writers/sheets/plan.py`` -> ``writers.sheets.plan``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> str | None:
    """The layer of a module of the package (None: a module outside every layer)."""
    top = name.split(".")[0]
    if "." not in name and top in CONFIG:
        return "config"
    if top == "dashboard":
        return "ops"
    return top if top in FOLDERS else None


def package_names(node: ast.AST) -> set[str]:
    """What an import statement names of the package (dotted, no prefix): for
    ``from syncqueue_tasks.store import queue``, ``store`` and ``store.queue`` (a module or
    not: ``from x import Name`` names ``x.Name``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
        return set()
    return {n.removeprefix("syncqueue_tasks.") for n in names if n.startswith("syncqueue_tasks.")}


def imported_modules(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (dotted, no prefix)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set().union(*(package_names(node) for node in ast.walk(tree)))
    return {name for name in found if _is_module(name)}


def _is_module(name: str) -> bool:
    base = PACKAGE.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


SOURCES = sorted(
    p for p in PACKAGE.rglob("*.py") if "migrations" not in p.relative_to(PACKAGE).parts
)


def test_every_module_is_in_a_layer() -> None:
    assert [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None] == []


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
    source.write_text("def f():\n    from syncqueue_tasks.celery import tasks\n")
    assert imported_modules(source) == {"celery", "celery.tasks"}
    assert layer_of("celery.tasks") not in {"writers", *ALLOWED["writers"]}


def test_the_package_imports_no_former_path() -> None:
    """Former flat paths are aliases for callers; the package itself uses the layer paths."""
    from syncqueue_tasks._moved import MOVED

    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = package_names(node)
            assert names.isdisjoint(MOVED), f"{module_name(path)} imports {names & set(MOVED)}"


def test_former_paths_are_the_same_modules() -> None:
    import importlib

    from syncqueue_tasks._moved import MOVED

    for old, new in MOVED.items():
        former = importlib.import_module(f"syncqueue_tasks.{old}")
        assert former is importlib.import_module(f"syncqueue_tasks.{new}"), old

"""The built wheel: every module ships, and the migrations too, so ``syncqueue migrate`` works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from dbutil import create_database, drop_database
from processes import ROOT

from syncqueue_tasks.store import schema

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

SHOW_ORIGIN = (
    "import sys, syncqueue_tasks; print(syncqueue_tasks.__file__, file=sys.stderr); "
    "from syncqueue_tasks.ops.cli import main; main()"
)


def test_the_wheel_carries_the_migrations_and_migrates_an_empty_database(tmp_path: Path) -> None:
    src = tmp_path / "src"  # build from a copy: nothing is left in the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("syncqueue_tasks", "migrations"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "celeryconfig.py"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", "dist"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("syncqueue_tasks-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(m.startswith("migrations/versions/") for m in migrations)
    assert {f"syncqueue_tasks/{m}" for m in migrations} <= shipped
    package = [  # every module and data file of the package, subpackages included
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "syncqueue_tasks").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "syncqueue_tasks/writers/sheets/writer.py" in package
    assert set(package) - shipped == set()

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    name = f"sq_wheel_{os.getpid()}"
    url = create_database(name)
    try:
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(site)}
        run = subprocess.run(
            [sys.executable, "-c", SHOW_ORIGIN, "migrate"],
            cwd=tmp_path,  # not the checkout: only the installed copy can be found
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        drop_database(name)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.startswith(str(site / "syncqueue_tasks" / "__init__.py"))
    [head] = schema.head_revisions()
    assert f"empty -> {head}" in run.stdout

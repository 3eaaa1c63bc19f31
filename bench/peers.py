"""syncqueue-tasks against plain SQL, pgqueuer and procrastinate, doing the same work in one run.

Run from the repository root, on the PostgreSQL server of the tests (by default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``SYNCQUEUE_TEST_ADMIN_URL`` overrides)::

    .venv/bin/pip install -e ".[bench]"          # pgqueuer (asyncpg driver), procrastinate
    .venv/bin/python bench/peers.py --quick      # under 2 minutes
    .venv/bin/python bench/peers.py              # full sizes (1,000,000 completed rows)
    .venv/bin/python bench/peers.py --json out.json
    .venv/bin/python bench/peers.py --profile    # where the time of one enqueue goes

The work, each contender its own way (the work, not the same statements; see
``bench/contenders.py``): enqueue one change per transaction; enqueue 1,000 per statement;
drain (claim 100 with ``FOR UPDATE SKIP LOCKED`` or the contender's own claim, complete them)
with 1 and with 4 processes; claim latency with 1,000,000 completed rows against none; claim
latency with one hot record holding 100,000 PENDING changes behind a change in flight against
a queue without it. A contender whose package is not installed, or to which a work does not
apply, shows ``n/a`` and why.

Each contender runs in its own agent processes (4 for the 4-process drain), in its own
database, copied fresh for every work from a template the contender set up; all are dropped
at the end. Every work has a warm-up, then several repetitions, the contenders taking turns
repetition by repetition so that a change in the machine's load hits them alike. A cell is
the median, ``±`` half the spread (min to max over repetitions; quartiles for latencies),
and the ratio to plain SQL. The machine's load average is printed with the results. Every
drain is checked: the contender handled, and its store holds as completed, exactly what it
enqueued (the run fails otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import psycopg  # noqa: E402
from contenders import (  # noqa: E402
    CLAIM,
    CONTENDERS,
    HOT,
    NEEDS,
    Contender,
    changes,
    clean_redis,
    take_all,
)

ADMIN_URL = os.environ.get(
    "SYNCQUEUE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PROCESSES = (1, 4)  # the drains' process counts
FILL_STEPS = 10  # the latency works' big fills come in this many parts, each then settled
WARM_CLAIMS = 6  # untimed claims per latency phase: past psycopg's prepare threshold (5)
CALL_TIMEOUT = 3600.0  # seconds an agent may take for one call (the 1,000,000-row fill)


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full run, ``--quick`` and ``--scale``."""

    each: int  # changes per repetition, one transaction each
    batched: int  # changes per repetition, 1,000 a statement
    drain: int  # items per drain repetition
    history: int  # completed rows added for the history latency
    hot: int  # PENDING changes behind the hot record
    samples: int  # claims per latency phase and contender
    reps: int
    slow_drain: float = 0.1  # procrastinate drains this share of ``drain`` (~50x slower)
    latency_budget: float = 60.0  # seconds of claims per latency phase and contender, at most

    def scaled(self, factor: float) -> Sizes:
        def s(n: int, low: int) -> int:
            return max(low, round(n * factor))

        return replace(
            self,
            each=s(self.each, 5),
            batched=s(self.batched, 10),
            drain=s(self.drain, 20),
            history=s(self.history, 100),
            hot=s(self.hot, 10),
            samples=s(self.samples, 3),
            latency_budget=self.latency_budget * min(1.0, factor),
        )


FULL = Sizes(
    each=2000, batched=20_000, drain=20_000, history=1_000_000, hot=100_000, samples=40, reps=5
)
QUICK = Sizes(
    each=200,
    batched=4000,
    drain=2000,
    history=20_000,
    hot=5000,
    samples=9,
    reps=3,
    latency_budget=3.0,
)


# --- agents: one process per contender and worker -----------------------------------------


def _timed(c: Contender, method: str, start: int, n: int, records: int) -> float:
    items = changes(start, n, records)
    began = time.perf_counter()
    getattr(c, method)(items)
    return time.perf_counter() - began


def _fill(c: Contender, start: int, n: int, records: int) -> None:
    c.enqueue_batched(changes(start, n, records))


def _supply(c: Contender, start: int, n: int) -> None:
    """``n`` claimable changes, each of its own record (the latency works' front)."""
    c.enqueue_batched(changes(start, n, 10**9, "cold"))


def _claims(c: Contender, k: int, budget: float) -> list[float]:
    """Seconds of up to ``k`` claims (at least one, then while within ``budget``); each claim
    is completed, untimed. A claim must take something, and never the hot record."""
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < k and (not times or time.perf_counter() - began < budget):
        start = time.perf_counter()
        handle, records = c.claim()
        times.append(time.perf_counter() - start)
        if not records or len(records) > c.claim_size:
            raise RuntimeError(f"{c.name}: a claim took {len(records)} changes")
        if f"{HOT}0" in records:
            raise RuntimeError(f"{c.name}: a claim took the hot record while it is in flight")
        c.complete(handle)
    return times


OPS: dict[str, Callable[..., Any]] = {
    "ping": lambda c: None,
    "install": lambda c, dsn: c.install(dsn),
    "open": lambda c, dsn: c.open(dsn),
    "close": lambda c: c.close(),
    "timed": _timed,
    "fill": _fill,
    "supply": _supply,
    "claims": _claims,
    "counts": lambda c: c.counts(),
    "take_all": take_all,
    "add_history": lambda c, start, n: c.add_history(n),
    "hold_hot": lambda c: c.hold_hot(),
    "add_hot": lambda c, start, n: c.add_hot(changes(start, n, 1, HOT)),
}


def agent_main(name: str, conn: Any, go: Any, env: dict[str, str]) -> None:
    """An agent: run the parent's calls on one contender until told to stop."""
    os.environ.update(env)
    logging.basicConfig(level=logging.WARNING)
    contender = CONTENDERS[name]()
    while True:
        op, kwargs = conn.recv()
        if op == "stop":
            return
        try:
            if op == "drain":
                contender.drain_prepare()
                conn.send(("ready", None))
                go.wait()
                result = contender.drain_run()
            else:
                result = OPS[op](contender, **kwargs)
            conn.send(("ok", result))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class Agent:
    """The parent's end of one agent process."""

    def __init__(self, ctx: Any, name: str, go: Any, env: dict[str, str]) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=agent_main, args=(name, child, go, env), daemon=True)
        self.proc.start()

    def send(self, op: str, **kwargs: Any) -> None:
        self.conn.send((op, kwargs))

    def receive(self, expect: str = "ok") -> Any:
        if not self.conn.poll(CALL_TIMEOUT):
            raise RuntimeError(f"{self.name} agent did not answer in {CALL_TIMEOUT:.0f} s")
        status, value = self.conn.recv()
        if status != expect:
            raise RuntimeError(f"{self.name} agent: {value}")
        return value

    def call(self, op: str, **kwargs: Any) -> Any:
        self.send(op, **kwargs)
        return self.receive()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("stop")
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)


class Team:
    """A contender's agent processes (as many as the largest drain), all started up front so
    that no interpreter starts while something is timed; ``open`` puts the first ``count``
    of them on a work database."""

    def __init__(self, ctx: Any, name: str, env: dict[str, str], processes: int) -> None:
        self.name = name
        self.kind = CONTENDERS[name]
        self.go = ctx.Event()
        self.agents = [Agent(ctx, name, self.go, env) for _ in range(processes)]
        self.opened: list[Agent] = []
        self.dsn: str | None = None
        self.next_id = 0  # numbers the changes a team enqueues, so ids never repeat

    def ready(self) -> None:
        for agent in self.agents:
            agent.call("ping")

    def numbers(self, n: int) -> int:
        start, self.next_id = self.next_id, self.next_id + n
        return start

    @property
    def lead(self) -> Agent:
        return self.agents[0]

    def open(self, dsn: str, count: int = 1) -> None:
        self.dsn, self.opened = dsn, self.agents[:count]
        for agent in self.opened:
            agent.call("open", dsn=dsn)

    def close(self) -> None:
        for agent in self.opened:
            agent.call("close")
        self.dsn, self.opened = None, []

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()


# --- databases -------------------------------------------------------------------------------


class Databases:
    """This run's databases on the admin server: templates, work copies; all dropped at the
    end."""

    def __init__(self, run: str) -> None:
        self.prefix = f"bench_{run}_"
        self.admin = psycopg.connect(ADMIN_URL, autocommit=True)

    def url(self, name: str) -> str:
        return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"

    def create(self, name: str, template: str | None = None) -> str:
        name = self.prefix + name
        suffix = f' TEMPLATE "{self.prefix}{template}"' if template else ""
        self.admin.execute(f'CREATE DATABASE "{name}"{suffix}')  # type: ignore[arg-type]
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    def drop_all(self) -> None:
        names = self.admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (self.prefix,)
        ).fetchall()
        for (name,) in names:
            self.drop(self.url(name))
        self.admin.close()


USER_TABLES = """
SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""


def settle(dsn: str) -> None:
    """VACUUM ANALYZE every table of the work database but the catalogs (untimed; the same
    for every contender)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(USER_TABLES).fetchone()
        if row and row[0]:
            conn.execute(f"VACUUM ANALYZE {row[0]}")  # type: ignore[arg-type]


# --- the works -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One contender's result for one row."""

    unit: str  # "/s" or "ms"
    samples: list[float]
    median: float = 0.0
    spread: float = 0.0  # half the min-max (rates) or interquartile (latencies) range, share
    checks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.median = statistics.median(self.samples)
        if self.unit == "ms" and len(self.samples) >= 4:
            q1, _, q3 = statistics.quantiles(self.samples, n=4)
            self.spread = (q3 - q1) / 2 / self.median
        else:
            self.spread = (max(self.samples) - min(self.samples)) / 2 / self.median


@dataclass
class Row:
    key: str
    title: str
    cells: dict[str, Cell | str]  # a Cell, or why there is none
    load: float = 0.0
    base: str | None = None  # latency rows "with": the key of the row "without"


def rotated(teams: list[Team], rep: int) -> list[Team]:
    k = rep % len(teams)
    return teams[k:] + teams[:k]


def rate_work(teams: list[Team], op: str, n: int, sizes: Sizes, records: int) -> dict[str, Cell]:
    """Changes per second of ``op`` (enqueue_each, enqueue_delay, enqueue_batched)."""
    rates: dict[str, list[float]] = {t.name: [] for t in teams}
    stored = dict.fromkeys(rates, 0)
    warm = max(10, n // 10)
    for t in teams:
        t.lead.call("timed", method=op, start=t.numbers(warm), n=warm, records=records)
        stored[t.name] += warm
    for rep in range(sizes.reps):
        for t in rotated(teams, rep):
            seconds = t.lead.call("timed", method=op, start=t.numbers(n), n=n, records=records)
            rates[t.name].append(n / seconds)
            stored[t.name] += n
    cells = {}
    for t in teams:
        counts = t.lead.call("counts")
        check(counts["left"] == stored[t.name], f"{t.name} {op}: stored {counts} of {stored}")
        cells[t.name] = Cell("/s", rates[t.name], checks={"enqueued": stored[t.name], **counts})
    return cells


def drain_once(team: Team, n: int, processes: int) -> tuple[float, dict[str, int]]:
    """Fill ``n`` items (untimed), then time ``processes`` agents draining them."""
    lead = team.lead
    before = lead.call("counts")
    lead.call("fill", start=team.numbers(n), n=n, records=max(1, n // 10))
    assert team.dsn is not None
    settle(team.dsn)
    agents = team.opened[:processes]
    check(len(agents) == processes, f"{team.name}: {len(agents)} agents open, {processes} wanted")
    for agent in agents:
        agent.send("drain")
    for agent in agents:
        agent.receive("ready")
    began = time.perf_counter()
    team.go.set()
    handled = sum(agent.receive() for agent in agents)
    seconds = time.perf_counter() - began
    team.go.clear()
    after = lead.call("counts")
    done = {
        "enqueued": n,
        "handled": handled,
        "completed": after["completed"] - before["completed"],
        "left": after["left"],
    }
    check(
        handled == done["completed"] == n and done["left"] == 0,
        f"{team.name} drain x{processes}: {done}",
    )
    return n / seconds, done


def drain_work(teams: list[Team], processes: int, sizes: Sizes) -> dict[str, Cell]:
    """Items per second drained by ``processes`` processes (fill untimed)."""

    def size(t: Team) -> int:
        share = sizes.slow_drain if t.name == "procrastinate" else 1.0
        return max(20, round(sizes.drain * share))

    rates: dict[str, list[float]] = {t.name: [] for t in teams}
    totals: dict[str, dict[str, int]] = {t.name: {} for t in teams}
    for t in teams:
        drain_once(t, max(20, size(t) // 10), processes)  # warm-up
    for rep in range(sizes.reps):
        for t in rotated(teams, rep):
            rate, done = drain_once(t, size(t), processes)
            rates[t.name].append(rate)
            for k, v in done.items():
                totals[t.name][k] = totals[t.name].get(k, 0) + v
    return {t.name: Cell("/s", rates[t.name], checks=totals[t.name]) for t in teams}


def grow(team: Team, op: str, n: int) -> None:
    """``op`` (add_history, add_hot) for ``n`` rows in tenths, each followed by ``settle``:
    plans cached while the table was small (a foreign key's check, say) would otherwise scan
    it whole for every row added (untimed, but it made procrastinate's fill take 25 minutes)."""
    assert team.dsn is not None
    step = max(1, -(-n // FILL_STEPS))
    for done in range(0, n, step):
        chunk = min(step, n - done)
        team.lead.call(op, start=team.numbers(chunk), n=chunk)
        settle(team.dsn)


def latency_work(
    teams: list[Team], op: str, n: int, sizes: Sizes, hold: bool
) -> tuple[dict[str, Cell], dict[str, Cell]]:
    """Milliseconds of one claim, on the queue as it is, then after ``op`` (add_history or
    add_hot; with ``hold``, the hot record's change is put in flight first) for ``n`` rows.
    Claimable changes (one record each) are added before each phase."""
    phases: list[dict[str, Cell]] = []
    for phase in range(2):
        if phase == 1:
            for t in teams:
                t.lead.call("take_all")  # claims cut short by the budget left some
                if hold:
                    t.lead.call("hold_hot")
                grow(t, op, n)
        for t in teams:
            want = (sizes.samples + WARM_CLAIMS) * t.kind.claim_size
            t.lead.call("supply", start=t.numbers(want), n=want)
            assert t.dsn is not None
            settle(t.dsn)
            t.lead.call("claims", k=WARM_CLAIMS, budget=sizes.latency_budget)
        times: dict[str, list[float]] = {t.name: [] for t in teams}
        per_rep = max(1, sizes.samples // sizes.reps)
        for rep in range(sizes.reps):
            for t in rotated(teams, rep):
                budget = sizes.latency_budget / sizes.reps
                times[t.name] += t.lead.call("claims", k=per_rep, budget=budget)
        phases.append({t.name: Cell("ms", [s * 1000 for s in times[t.name]]) for t in teams})
    return phases[0], phases[1]


class Failed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


# --- report ----------------------------------------------------------------------------------


def fmt_cell(row: Row, name: str, by_key: dict[str, Row]) -> str:
    """``median ±spread (ratios)``: rates against plain SQL; latencies against the same
    contender's queue without (rows with a base) and against plain SQL."""
    cell = row.cells.get(name)
    if not isinstance(cell, Cell):
        return "n/a" if cell else ""
    plain = by_key["each" if row.key == "delay" else row.key].cells.get("plain")
    notes = []
    if row.base is not None:
        before = by_key[row.base].cells.get(name)
        if isinstance(before, Cell):
            notes.append(f"{cell.median / before.median:.2f}x without")
    if name != "plain" and isinstance(plain, Cell):
        ratio = cell.median / plain.median
        notes.append(f"{ratio:.2f}x" if cell.unit == "/s" else f"{ratio:.1f}x plain")
    value = f"{cell.median:,.0f}/s" if cell.unit == "/s" else f"{cell.median:.2f} ms"
    return f"{value} ±{cell.spread * 100:.0f}%" + (f" ({', '.join(notes)})" if notes else "")


def render(rows: list[Row], names: list[str]) -> list[str]:
    """The table as aligned Markdown, then the reasons behind each n/a."""
    by_key = {r.key: r for r in rows}
    head = ["work", *[CONTENDERS[n].title for n in names], "load 1m"]
    body = [[r.title, *[fmt_cell(r, n, by_key) for n in names], f"{r.load:.2f}"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        out = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "| " + " | ".join(out) + " |"

    lines = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(b) for b in body]
    reasons = sorted(
        {
            f"{CONTENDERS[n].title}: {c}"
            for r in rows
            for n, c in r.cells.items()
            if isinstance(c, str) and c
        }
    )
    notes = [f"{CONTENDERS[n].title}: {CONTENDERS[n].note}" for n in names]
    return lines + [""] + notes + [f"n/a: {r}" for r in reasons]


# --- main ------------------------------------------------------------------------------------


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in NEEDS.get(name, ()))


def run(sizes: Sizes, names: list[str], run_id: str, log: Callable[[str], None]) -> list[Row]:
    """Every work for every contender in ``names``; returns the table's rows."""
    ctx = mp.get_context("spawn")
    dbs = Databases(run_id)
    env = {"CELERY_QUEUE": f"bench_{run_id}", "SYNCQUEUE_ENQUEUE_MODE": "direct"}
    teams = {n: Team(ctx, n, env, max(PROCESSES)) for n in names}
    every = list(teams.values())
    missing = {
        n: "not chosen (--only)" if installed(n) else "not installed (pip install -e '.[bench]')"
        for n in CONTENDERS
        if n not in names
    }
    rows: list[Row] = []
    started = time.perf_counter()

    def work(
        key: str,
        title: str,
        body: Callable[[list[Team]], Any],
        chosen: list[Team],
        processes: int = 1,
    ) -> Any:
        """Run ``body`` with each chosen team on a fresh copy of its template database."""
        load = os.getloadavg()[0]
        log(f"{title} ... ({time.perf_counter() - started:.0f} s, load {load:.2f})")
        for t in chosen:
            t.open(dbs.create(f"{t.name}_{key}", template=f"{t.name}_tpl"), processes)
        try:
            return body(chosen)
        finally:
            for t in chosen:
                assert t.dsn is not None
                dsn = t.dsn
                t.close()
                dbs.drop(dsn)

    def add(key: str, title: str, cells: dict[str, Any], base: str | None = None) -> None:
        rows.append(Row(key, title, {**missing, **cells}, os.getloadavg()[0], base))

    def enqueue(key: str, title: str, op: str, n: int, chosen: list[Team]) -> None:
        records = max(1, n // 5)
        body = partial(rate_work, op=op, n=n, sizes=sizes, records=records)
        add(key, title, work(key, f"{title}: {n:,} changes", body, chosen))

    def latency(key: str, op: str, n: int, before: str, after: str, hold: bool) -> None:
        why = {t: getattr(CONTENDERS[t], key) for t in teams if getattr(CONTENDERS[t], key)}
        chosen = [t for t in every if t.name not in why]
        body = partial(latency_work, op=op, n=n, sizes=sizes, hold=hold)
        without, with_ = work(key, f"claim latency, {after}", body, chosen)
        add(f"{key}0", f"claim latency, {before}", {**why, **without})
        add(key, f"claim latency, {after}", {**why, **with_}, base=f"{key}0")

    try:
        for t in every:
            t.ready()
            t.lead.call("install", dsn=dbs.create(f"{t.name}_tpl"))
        enqueue("each", "enqueue, one commit each", "enqueue_each", sizes.each, every)
        if "ours" in teams:
            title = "enqueue via .delay() (direct mode)"
            enqueue("delay", title, "enqueue_delay", sizes.each, [teams["ours"]])
        enqueue("batched", "enqueue batched x1,000", "enqueue_batched", sizes.batched, every)
        for p in PROCESSES:
            title = f"drain, claim {CLAIM} + complete, {p} process{'es' * (p > 1)}"
            body = partial(drain_work, processes=p, sizes=sizes)
            add(f"drain{p}", title, work(f"drain{p}", title, body, every, p))
        latency(
            "history",
            "add_history",
            sizes.history,
            "no completed rows",
            f"+ {sizes.history:,} completed rows",
            hold=False,
        )
        latency(
            "hot",
            "add_hot",
            sizes.hot,
            "no hot record",
            f"hot record: 1 in flight, {sizes.hot:,} pending behind",
            hold=True,
        )
    finally:
        for t in every:
            t.stop()
        dbs.drop_all()
        clean_redis(env["CELERY_QUEUE"])
    return rows


def code_under_test() -> str:
    """Where the measured package comes from, and a digest of its sources and migrations
    (others may edit them during a run)."""
    files = sorted(
        [*(ROOT / "syncqueue_tasks").rglob("*.py"), *(ROOT / "migrations").rglob("*.py")]
    )
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    return f"{ROOT} (sources sha256 {digest})"


def environment(server: str) -> str:
    import sqlalchemy

    versions = [
        f"PostgreSQL {server}",
        f"Python {platform.python_version()}",
        f"psycopg {psycopg.__version__}",
        f"SQLAlchemy {sqlalchemy.__version__}",
    ]
    for dist in ("pgqueuer", "procrastinate", "asyncpg"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    return ", ".join(versions) + f", {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under 2 minutes)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size")
    parser.add_argument("--reps", type=int, help="repetitions per work (default 5, quick 3)")
    parser.add_argument("--only", help="comma-separated contenders (plain,pgqueuer,...)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--profile", action="store_true", help="only profile one enqueue (where its time goes)"
    )
    parser.add_argument("--profile-n", type=int, default=2000, help="enqueues profiled")
    args = parser.parse_args(argv)
    if args.profile:
        from enqueue_profile import profile

        return profile(ADMIN_URL, args.profile_n)
    sizes = (QUICK if args.quick else FULL).scaled(args.scale)
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    wanted = args.only.split(",") if args.only else list(CONTENDERS)
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    names = [n for n in CONTENDERS if n in wanted and installed(n)]
    run_id = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        env = environment(str(row[0]).split()[0])
    load_start = os.getloadavg()
    code = code_under_test()
    print(f"peers benchmark ({'quick' if args.quick else 'full'}), run {run_id}; {env}")
    print(f"code under test: {code}")
    print(f"sizes: {sizes}")
    began = time.perf_counter()
    rows = run(sizes, names, run_id, lambda s: print(s, flush=True))
    load_end = os.getloadavg()
    print()
    print("\n".join(render(rows, list(CONTENDERS))))
    print()
    loads = " / ".join(f"{x:.2f}" for x in load_end)
    print(
        f"load average 1/5/15 min at the start {' / '.join(f'{x:.2f}' for x in load_start)},"
        f" at the end {loads}; {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "code": code,
                    "sizes": asdict(sizes),
                    "load_start": load_start,
                    "load_end": load_end,
                    "rows": [asdict(r) for r in rows],
                },
                indent=1,
            )
        )
    if code_under_test() != code:
        print(f"WARNING: the sources changed during the run; now {code_under_test()}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every environment variable the package reads (except Celery's own, in ``celery/config``).

The variables are read at the edges (a task, a CLI verb, a writer's factory) into small typed
configs, one per part, and those are passed down: the queue gets a ``QueueConfig``, validation
its ``Limits``, the Sheets writer a ``SheetsConfig``. Each config can also be built in code
(every field has the README's default). :func:`get_settings` reads them all once per process;
tests call ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Self, TypeVar

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.core.validation import Limits

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@localhost:5432/postgres"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "syncqueue"


def normalize_database_url(url: str) -> str:
    """Name the psycopg 3 driver in a plain ``postgresql://`` / ``postgres://`` URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def env_int(name: str, default: int, low: int, high: int) -> int:
    """The integer variable ``name``, within ``low``..``high``; ``default`` when unset."""
    return _env_number(name, default, low, high, int, "an integer")


def env_float(name: str, default: float, low: float, high: float) -> float:
    """The number variable ``name``, within ``low``..``high``; ``default`` when unset."""
    return _env_number(name, default, low, high, float, "a number")


_Number = TypeVar("_Number", int, float)


def _env_number(
    name: str,
    default: _Number,
    low: _Number,
    high: _Number,
    parse: Callable[[str], _Number],
    kind: str,
) -> _Number:
    """The variable ``name`` parsed, within ``low``..``high``; ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """The variable ``name``, lowercased, one of ``choices``; ``default`` when unset."""
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_mapping(name: str) -> dict[str, str]:
    """Parse ``A=x,B=y`` into ``{"A": "x", "B": "y"}``."""
    result: dict[str, str] = {}
    for part in os.environ.get(name, "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigurationError(f"{name} must look like Model=Tab,Other=Tab2; got {part!r}")
        result[key.strip()] = value.strip()
    return result


def env_lists(name: str) -> dict[str, tuple[str, ...]]:
    """Parse ``A=x,y;B=z`` into ``{"A": ("x", "y"), "B": ("z",)}``."""
    result: dict[str, tuple[str, ...]] = {}
    for part in os.environ.get(name, "").split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        items = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key.strip() or not items:
            raise ConfigurationError(
                f"{name} must look like Model=field1,field2;Other=field3; got {part!r}"
            )
        result[key.strip()] = items
    return result


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def env_bool(name: str, default: bool) -> bool:
    """``true`` or ``false`` (``1``/``yes``/``on``, ``0``/``no``/``off`` too); ``default``
    when unset."""
    return env_choice(name, "true" if default else "false", _TRUE + _FALSE) in _TRUE


def env_text(name: str, default: str = "") -> str:
    """The variable ``name``, stripped; ``default`` when unset or blank."""
    return os.environ.get(name, "").strip() or default


def broker_url_from_env() -> str:
    """``CELERY_BROKER_URL``: the Celery broker (and the Redis of the package's own keys when
    ``SYNCQUEUE_REDIS_URL`` is unset)."""
    return env_text("CELERY_BROKER_URL", DEFAULT_BROKER_URL)


def queue_name_from_env() -> str:
    """``CELERY_QUEUE``: the package app's queue, and the prefix of the package's Redis keys."""
    return env_text("CELERY_QUEUE", DEFAULT_QUEUE)


def data_dir_from_env() -> Path:
    """``SYNCQUEUE_DATA_DIR``: the local stack, the workbook, beat's schedule, resume files."""
    return Path(env_text("SYNCQUEUE_DATA_DIR", ".syncqueue"))


@dataclass(frozen=True)
class DatabaseConfig:
    """The PostgreSQL database the queue lives in (``store.db``)."""

    url: str = DEFAULT_DATABASE_URL
    pool_size: int = 5
    #: ``.delay()``'s direct store gives up after this long and hands the change to the broker.
    enqueue_timeout_ms: int = 200

    @classmethod
    def from_env(cls) -> Self:
        """``DATABASE_URL``, ``SYNCQUEUE_DB_POOL_SIZE``, ``SYNCQUEUE_ENQUEUE_TIMEOUT_MS``."""
        return cls(
            url=normalize_database_url(env_text("DATABASE_URL", cls.url)),
            pool_size=env_int("SYNCQUEUE_DB_POOL_SIZE", cls.pool_size, 1, 100),
            enqueue_timeout_ms=env_int(
                "SYNCQUEUE_ENQUEUE_TIMEOUT_MS", cls.enqueue_timeout_ms, 10, 60_000
            ),
        )


def limits_from_env() -> Limits:
    """The input limits (``core.validation.Limits``) the environment sets."""
    models = frozenset(
        m.strip() for m in os.environ.get("SYNCQUEUE_MODELS", ",".join(Limits.models)).split(",")
    ) - {""}
    if not models:
        raise ConfigurationError("SYNCQUEUE_MODELS must name at least one model")
    return Limits(
        models=models,
        max_record_id_length=env_int(
            "SYNCQUEUE_MAX_RECORD_ID_LENGTH", Limits.max_record_id_length, 1, 255
        ),
        max_payload_bytes=env_int(
            "SYNCQUEUE_MAX_PAYLOAD_BYTES", Limits.max_payload_bytes, 16, 16 * 1024 * 1024
        ),
        default_max_retries=env_int("SYNCQUEUE_MAX_RETRIES", Limits.default_max_retries, 0, 100),
    )


@dataclass(frozen=True)
class QueueConfig:
    """How the queue claims, backs off and cleans up (``store.queue.QueueStore``)."""

    claim_max_changes: int = 1000
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    cleanup_chunk_size: int = 5000

    @classmethod
    def from_env(cls) -> Self:
        """``SYNCQUEUE_CLAIM_MAX_CHANGES``, ``SYNCQUEUE_BACKOFF_*``, ``..._CLEANUP_CHUNK_SIZE``."""
        return cls(
            claim_max_changes=env_int(
                "SYNCQUEUE_CLAIM_MAX_CHANGES", cls.claim_max_changes, 1, 100_000
            ),
            backoff_base_seconds=env_float(
                "SYNCQUEUE_BACKOFF_BASE_SECONDS", cls.backoff_base_seconds, 0.0, 3600.0
            ),
            backoff_max_seconds=env_float(
                "SYNCQUEUE_BACKOFF_MAX_SECONDS", cls.backoff_max_seconds, 0.0, 86400.0
            ),
            cleanup_chunk_size=env_int(
                "SYNCQUEUE_CLEANUP_CHUNK_SIZE", cls.cleanup_chunk_size, 1, 100000
            ),
        )


@dataclass(frozen=True)
class TaskConfig:
    """What the Celery tasks do with a call (``celery.tasks``)."""

    batch_size: int = 25
    batch_time_budget: float = 60.0
    enqueue_mode: str = "direct"
    kick_delay: float = 0.2

    @classmethod
    def from_env(cls) -> Self:
        """``SYNCQUEUE_BATCH_SIZE``, ``..._BATCH_TIME_BUDGET``, ``..._ENQUEUE_MODE``,
        ``..._KICK_DELAY``."""
        return cls(
            batch_size=env_int("SYNCQUEUE_BATCH_SIZE", cls.batch_size, 1, 1000),
            batch_time_budget=env_float(
                "SYNCQUEUE_BATCH_TIME_BUDGET", cls.batch_time_budget, 0.0, 3600.0
            ),
            enqueue_mode=env_choice(
                "SYNCQUEUE_ENQUEUE_MODE", cls.enqueue_mode, ("direct", "broker")
            ),
            kick_delay=env_float("SYNCQUEUE_KICK_DELAY", cls.kick_delay, 0.0, 60.0),
        )


@dataclass(frozen=True)
class DestinationConfig:
    """Which writer, and the rules every spreadsheet writer follows (``writers.rules``)."""

    #: ``package.module:factory``; empty: Google Sheets when configured, else the workbook.
    writer: str = ""
    id_column: str = "id"
    unknown_fields: str = "add_column"
    update_missing: str = "create"
    delete_mode: str = "tombstone"
    workbook_path: Path = Path(".syncqueue/workbook.xlsx")
    jsonl_path: str = ""

    @classmethod
    def from_env(cls, data_dir: Path) -> Self:
        """``SYNCQUEUE_WRITER``, ``..._ID_COLUMN``, ``..._UNKNOWN_FIELDS``,
        ``..._UPDATE_MISSING``, ``..._DELETE_MODE``, ``..._WORKBOOK_PATH``, ``..._JSONL_PATH``."""
        return cls(
            writer=env_text("SYNCQUEUE_WRITER"),
            id_column=env_text("SYNCQUEUE_ID_COLUMN", cls.id_column),
            unknown_fields=env_choice(
                "SYNCQUEUE_UNKNOWN_FIELDS", cls.unknown_fields, ("add_column", "fail")
            ),
            update_missing=env_choice(
                "SYNCQUEUE_UPDATE_MISSING", cls.update_missing, ("create", "fail")
            ),
            delete_mode=env_choice(
                "SYNCQUEUE_DELETE_MODE", cls.delete_mode, ("tombstone", "remove")
            ),
            workbook_path=Path(env_text("SYNCQUEUE_WORKBOOK_PATH") or data_dir / "workbook.xlsx"),
            jsonl_path=env_text("SYNCQUEUE_JSONL_PATH"),
        )


@dataclass(frozen=True)
class SheetsConfig:
    """The Google Sheets writer's spreadsheet, account, request sizes and quota."""

    spreadsheet_id: str = ""
    credentials_file: str = ""
    api_url: str = "https://sheets.googleapis.com"
    #: model -> tab title (default: the model's name).
    tabs: dict[str, str] = field(default_factory=dict)
    #: One write request per batch: as many records as fit this many bytes.
    max_request_bytes: int = 1_000_000
    batch_records: int = 5000
    conflicts: str = "overwrite"
    long_cells: str = "fail"
    #: model -> the order of its first columns.
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_cells: int = 10_000_000
    #: Google's per-user quota per minute (a service account is one user), per kind.
    read_quota: int = 60
    write_quota: int = 60
    #: Seconds added to the 60 s window when pacing (covers network jitter).
    quota_margin: float = 2.0
    #: Requests that may go at once: a round's tabs read, ids read and rows read.
    quota_burst: int = 3

    @classmethod
    def from_env(cls) -> Self:
        """The ``SYNCQUEUE_SHEETS_*`` variables (and ``GOOGLE_APPLICATION_CREDENTIALS``)."""
        return cls(
            spreadsheet_id=env_text("SYNCQUEUE_SHEETS_SPREADSHEET_ID"),
            credentials_file=env_text("SYNCQUEUE_SHEETS_CREDENTIALS_FILE")
            or env_text("GOOGLE_APPLICATION_CREDENTIALS"),
            api_url=env_text("SYNCQUEUE_SHEETS_API_URL", cls.api_url).rstrip("/"),
            tabs=env_mapping("SYNCQUEUE_SHEETS_TABS"),
            max_request_bytes=env_int(
                "SYNCQUEUE_SHEETS_MAX_REQUEST_BYTES", cls.max_request_bytes, 10_000, 10_000_000
            ),
            batch_records=env_int("SYNCQUEUE_SHEETS_BATCH_RECORDS", cls.batch_records, 1, 100_000),
            conflicts=env_choice(
                "SYNCQUEUE_SHEETS_CONFLICTS", cls.conflicts, ("overwrite", "keep")
            ),
            long_cells=env_choice(
                "SYNCQUEUE_SHEETS_LONG_CELLS", cls.long_cells, ("fail", "truncate")
            ),
            columns=env_lists("SYNCQUEUE_SHEETS_COLUMNS"),
            max_cells=env_int("SYNCQUEUE_SHEETS_MAX_CELLS", cls.max_cells, 1, 10_000_000),
            read_quota=env_int("SYNCQUEUE_SHEETS_READ_QUOTA", cls.read_quota, 1, 100_000),
            write_quota=env_int("SYNCQUEUE_SHEETS_WRITE_QUOTA", cls.write_quota, 1, 100_000),
            quota_margin=env_float("SYNCQUEUE_SHEETS_QUOTA_MARGIN", cls.quota_margin, 0.0, 60.0),
            quota_burst=env_int("SYNCQUEUE_SHEETS_QUOTA_BURST", cls.quota_burst, 1, 60),
        )


@dataclass(frozen=True)
class RedisConfig:
    """The Redis the package keeps its own keys in (kick debounce, counters, Sheets limiter)."""

    url: str = DEFAULT_BROKER_URL
    #: Keys are namespaced by the Celery queue's name.
    prefix: str = DEFAULT_QUEUE

    @classmethod
    def from_env(cls) -> Self:
        """``SYNCQUEUE_REDIS_URL`` (else ``CELERY_BROKER_URL``), ``CELERY_QUEUE``."""
        return cls(
            url=env_text("SYNCQUEUE_REDIS_URL") or broker_url_from_env(),
            prefix=queue_name_from_env(),
        )


@dataclass(frozen=True)
class DashboardConfig:
    """The operator's dashboard (``dashboard``)."""

    port: int = 8085
    password: str = field(default="", repr=False)
    #: Behind a TLS-terminating proxy: mark the session cookie Secure.
    secure_cookies: bool = False
    refresh_seconds: int = 5

    @classmethod
    def from_env(cls) -> Self:
        """The ``SYNCQUEUE_DASHBOARD_*`` variables."""
        return cls(
            port=env_int("SYNCQUEUE_DASHBOARD_PORT", cls.port, 1, 65535),
            password=os.environ.get("SYNCQUEUE_DASHBOARD_PASSWORD", ""),
            secure_cookies=env_bool("SYNCQUEUE_DASHBOARD_SECURE_COOKIES", cls.secure_cookies),
            refresh_seconds=env_int(
                "SYNCQUEUE_DASHBOARD_REFRESH_SECONDS", cls.refresh_seconds, 1, 3600
            ),
        )


@dataclass(frozen=True)
class Settings:
    """Every part's config, read from the environment (the README's configuration table)."""

    database: DatabaseConfig
    limits: Limits
    queue: QueueConfig
    tasks: TaskConfig
    destination: DestinationConfig
    sheets: SheetsConfig
    redis: RedisConfig
    dashboard: DashboardConfig
    #: Where the local stack, the workbook and backfill resume files live.
    data_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from ``os.environ``; raise ``ConfigurationError`` on bad values."""
        data_dir = data_dir_from_env()
        return cls(
            database=DatabaseConfig.from_env(),
            limits=limits_from_env(),
            queue=QueueConfig.from_env(),
            tasks=TaskConfig.from_env(),
            destination=DestinationConfig.from_env(data_dir),
            sheets=SheetsConfig.from_env(),
            redis=RedisConfig.from_env(),
            dashboard=DashboardConfig.from_env(),
            data_dir=data_dir,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()

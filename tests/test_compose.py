"""Static checks of the Docker deployment: docker-compose.yml, Dockerfile, .env.example,
.dockerignore.

Docker does not run where this suite runs, so the files are checked as data against the
repository and this virtualenv: the compose file is valid YAML (duplicate keys rejected, as
compose does), every service has an image or a build, every ``depends_on`` condition can be
met, every command names a real module or CLI entry, beat has one replica, Flower has basic
auth, every ``${VAR}`` is documented in .env.example, which holds no real secrets, and every
COPY source of the Dockerfile exists in the build context. Where a Docker engine answers,
``docker compose config -q`` checks the file as well (``-m docker``).
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
PYPROJECT = ROOT / "pyproject.toml"
ALEMBIC_INI = ROOT / "alembic.ini"

CELERY_APP = "syncqueue_tasks.celery_app"
CELERY_SUBCOMMANDS = {"worker", "beat", "flower"}
# Celery's global options that take a value (``celery -A app --broker url worker``).
CELERY_VALUE_OPTIONS = {
    "-A",
    "--app",
    "-b",
    "--broker",
    "--result-backend",
    "--loader",
    "--config",
    "--workdir",
}
# Third-party images: the executables their services may run.
IMAGE_COMMANDS = {"redis": {"redis-server", "redis-cli"}, "postgres": {"postgres"}}
LONG_RUNNING = {"redis-server", "postgres"}
CONDITIONS = {"service_healthy", "service_completed_successfully"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|PRIVATE|AUTH|CREDENTIAL", re.I)
PLACEHOLDER = re.compile(r"change-?_?me|example|placeholder|your-|<[^>]+>|^\$\{", re.I)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, $NAME
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --- loading --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (compose does; PyYAML keeps the last one).
    Keys brought in by a ``<<`` merge may be overridden, as YAML allows."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_compose() -> dict[str, Any]:
    data = yaml.load(COMPOSE_FILE.read_text(), Loader=_StrictLoader)  # a SafeLoader
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def parse_env_file(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(assignments, commented_out_assignments)`` of a dotenv file, quotes removed."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        target = active
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.match(r"^[A-Z][A-Z0-9_]*=", line):
                continue  # prose
            target = commented
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), (
            f".env.example line {number} is not KEY=VALUE: {raw!r}"
        )
        assert key not in target, f".env.example sets {key} twice (line {number})"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        target[key] = value
    return active, commented


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE.read_text())[0]


def strings_in(value: Any) -> list[str]:
    """Every string (keys and values) in a loaded YAML tree; comments are not in it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def interpolations(text: str) -> list[re.Match[str]]:
    return list(INTERPOLATION.finditer(text.replace("$$", "")))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file."""

    def one(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and not (value if op == ":?" else value is not None):
            raise AssertionError(f"{name} is required: {arg}")
        return value or ""

    parts = text.split("$$")
    return "$".join(INTERPOLATION.sub(one, part) for part in parts)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_of(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def copy_parts(arguments: str) -> tuple[dict[str, str], list[str], str]:
    """``(flags, sources, destination)`` of a COPY/ADD instruction, shell or JSON form."""
    tokens = shlex.split(arguments)
    flags: dict[str, str] = {}
    while tokens and tokens[0].startswith("--"):
        name, _, value = tokens.pop(0)[2:].partition("=")
        flags[name] = value
    rest = " ".join(tokens)
    if rest.startswith("["):
        tokens = json.loads(rest)
    assert len(tokens) >= 2, f"COPY needs a source and a destination: {arguments!r}"
    return flags, tokens[:-1], tokens[-1]


def dockerfile_cmd() -> list[str]:
    cmds = [args for name, args in dockerfile_instructions() if name == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    last = cmds[-1]
    return json.loads(last) if last.startswith("[") else shlex.split(last)


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def is_dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the context) out of the build context.
    The last matching pattern wins; a pattern that matches a folder matches what is in it."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().removeprefix("./").lstrip("/").rstrip("/")
        options = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in options):
            ignored = not negate
    return ignored


# --- commands -------------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    return dict(pyproject()["project"].get("scripts", {}))


def celery_parts(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """``(app, subcommand, rest)`` of the arguments after ``celery``."""
    app: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in CELERY_VALUE_OPTIONS:
            if arg in ("-A", "--app") and i + 1 < len(args):
                app = args[i + 1]
            i += 2
            continue
        if arg.startswith("--app="):
            app = arg.split("=", 1)[1]
        elif arg.startswith("-A") and len(arg) > 2:
            app = arg[2:].lstrip("=")
        elif not arg.startswith("-"):
            return app, arg, args[i + 1 :]
        i += 1
    return app, None, []


def module_defines_app(module: str, attribute: str | None) -> bool:
    """Without importing it: does ``module`` bind ``attribute`` (or, as ``celery -A`` looks
    for, ``app`` / ``celery``) at module level?"""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return spec is not None  # a package or compiled module: trust find_spec
    tree = ast.parse(Path(spec.origin).read_text())
    names = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    return attribute in names if attribute else bool(names & {"app", "celery"})


def find_spec_or_none(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def command_problems(argv: list[str]) -> list[str]:
    """What is wrong with a command run in this project's image (empty: nothing)."""
    if not argv:
        return ["no command (and the image's default was not resolved)"]
    exe, args = argv[0], argv[1:]
    if exe == "celery":
        app, sub, _ = celery_parts(args)
        problems = []
        if app is None:
            problems.append(f"celery without -A: {argv}")
        else:
            module, _, attribute = app.partition(":")
            if find_spec_or_none(module) is None:
                problems.append(f"celery -A {app}: module {module!r} is not importable")
            elif not module_defines_app(module, attribute or None):
                problems.append(f"celery -A {app}: {module} defines no Celery app")
        if sub not in CELERY_SUBCOMMANDS:
            problems.append(f"celery subcommand {sub!r} is not one of {sorted(CELERY_SUBCOMMANDS)}")
        if sub == "flower" and "flower" not in {
            ep.name for ep in importlib.metadata.entry_points(group="celery.commands")
        }:
            problems.append("celery flower: the flower package is not installed")
        return problems
    if exe == "alembic":
        return alembic_problems(args)
    scripts = console_scripts()
    if exe in scripts:
        module = scripts[exe].partition(":")[0]
        if find_spec_or_none(module) is None:
            return [f"console script {exe} -> {scripts[exe]}: {module!r} is not importable"]
        return []
    return [f"{exe!r} is neither celery, alembic nor a console script of pyproject.toml"]


def alembic_problems(args: list[str]) -> list[str]:
    problems = []
    if not ALEMBIC_INI.is_file():
        return ["alembic: alembic.ini is missing"]
    parser = configparser.ConfigParser(defaults={"here": str(ROOT)})
    parser.read(ALEMBIC_INI)
    location = Path(parser.get("alembic", "script_location"))
    location = location if location.is_absolute() else ROOT / location
    if not (location / "env.py").is_file() or not (location / "versions").is_dir():
        problems.append(f"alembic: {location} has no env.py or versions/")
    import alembic.command

    sub = next((a for a in args if not a.startswith("-")), None)
    if sub is None or not callable(getattr(alembic.command, sub, None)):
        problems.append(f"alembic: {sub!r} is not an alembic command")
    return problems


def is_long_running(argv: list[str]) -> bool:
    if not argv:
        return True  # an image's default command is its server
    if argv[0] == "celery":
        return celery_parts(argv[1:])[1] in CELERY_SUBCOMMANDS | {"events", "multi"}
    if argv[0] in console_scripts():
        return "run" in argv[1:2]
    return argv[0] in LONG_RUNNING


def service_argv(service: dict[str, Any]) -> list[str]:
    argv = argv_of(service.get("command"))
    if not argv and "build" in service:
        argv = dockerfile_cmd()
    return argv


# --- compose: structure ---------------------------------------------------------------------


@pytest.mark.unit
def test_compose_file_is_valid_yaml(compose: dict[str, Any]) -> None:
    allowed = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
    unknown = {k for k in compose if k not in allowed and not str(k).startswith("x-")}
    assert not unknown, f"unknown top-level keys: {unknown}"
    assert isinstance(compose.get("services"), dict) and compose["services"]
    assert {"postgres", "redis", "migrate", "worker", "beat", "flower"} <= set(compose["services"])


@pytest.mark.unit
def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (ROOT / context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"


@pytest.mark.unit
def test_infrastructure_images_and_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])


@pytest.mark.unit
def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name}: volume {source!r} is not declared"
    postgres_volumes = compose["services"]["postgres"]["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres_volumes)


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return False
    test = check.get("test")
    return bool(test) and test != ["NONE"]


@pytest.mark.unit
def test_depends_on_conditions_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions only waits for a start")
            continue
        for target, spec in depends.items():
            condition = (spec or {}).get("condition")
            if target not in services:
                problems.append(f"{name} depends on unknown service {target!r}")
            elif condition not in CONDITIONS:
                problems.append(f"{name} -> {target}: condition {condition!r} not in {CONDITIONS}")
            elif condition == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(f"{name} waits for {target} healthy, which has no healthcheck")
            elif condition == "service_completed_successfully":
                one_shot = services[target]
                if one_shot.get("restart") != "no":
                    problems.append(f"{name} waits for {target} to exit; its restart is not 'no'")
                if is_long_running(service_argv(one_shot)):
                    problems.append(f"{name} waits for {target} to exit; its command never does")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {t: s["condition"] for t, s in services[name].get("depends_on", {}).items()}

    assert services["migrate"]["restart"] == "no"
    assert argv_of(services["migrate"]["command"]) == ["alembic", "upgrade", "head"]
    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("worker") == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name in ("beat", "flower"):
        assert conditions(name).get("redis") == "service_healthy", name


# --- compose: commands ----------------------------------------------------------------------


@pytest.mark.unit
def test_every_command_names_a_real_module_or_cli_entry(
    services: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name, service in services.items():
        argv = service_argv(service)
        if "build" in service:
            problems += [f"{name}: {p}" for p in command_problems(argv)]
        elif argv:
            image = str(service["image"]).split(":")[0].rsplit("/", 1)[-1]
            if argv[0] not in IMAGE_COMMANDS.get(image, set()):
                problems.append(f"{name}: {argv[0]!r} is not a command of the {image} image")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_service_commands(services: dict[str, dict[str, Any]]) -> None:
    def celery(name: str) -> tuple[str | None, str | None]:
        app, sub, _ = celery_parts(argv_of(services[name]["command"])[1:])
        return app, sub

    assert celery("worker") == (CELERY_APP, "worker")
    assert "--loglevel=INFO" in argv_of(services["worker"]["command"])
    assert celery("beat") == (CELERY_APP, "beat")
    assert celery("flower") == (CELERY_APP, "flower")


@pytest.mark.unit
def test_dockerfile_default_command_is_a_worker() -> None:
    argv = dockerfile_cmd()
    assert command_problems(argv) == []
    assert celery_parts(argv[1:])[:2] == (CELERY_APP, "worker")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["celery", "-A", "no_such_package.app", "worker"], "not importable"),
        (["celery", "-A", "syncqueue_tasks.settings", "worker"], "defines no Celery app"),
        (["celery", "-A", CELERY_APP, "purge"], "subcommand 'purge'"),
        (["celery", "worker"], "without -A"),
        (["alembic", "frobnicate"], "not an alembic command"),
        (["no-such-script", "run"], "neither celery, alembic nor a console script"),
        ([], "no command"),
    ],
)
def test_command_check_rejects_what_cannot_run(argv: list[str], expected: str) -> None:
    """The command check is not vacuous: each of these would fail in a container."""
    assert any(expected in p for p in command_problems(argv)), command_problems(argv)


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv",
    [
        ["celery", "-A", CELERY_APP, "worker", "--loglevel=INFO"],
        ["celery", f"--app={CELERY_APP}", "beat"],
        ["celery", f"-A{CELERY_APP}", "--broker", "redis://x", "flower", "--port=5555"],
        ["alembic", "upgrade", "head"],
    ],
)
def test_command_check_accepts_what_runs(argv: list[str]) -> None:
    assert command_problems(argv) == []


@pytest.mark.unit
def test_beat_has_exactly_one_replica(services: dict[str, dict[str, Any]]) -> None:
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas") == 1
    assert beat.get("scale", 1) == 1
    running_beat = [
        name
        for name, service in services.items()
        if celery_parts(service_argv(service)[1:])[1] == "beat"
        or {"-B", "--beat"} & set(service_argv(service))  # a worker with embedded beat
    ]
    assert running_beat == ["beat"], f"beat runs in {running_beat}"
    assert "--beat" not in dockerfile_cmd() and "-B" not in dockerfile_cmd()


@pytest.mark.unit
def test_flower_uses_basic_auth(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    flower = services["flower"]
    argv = argv_of(flower["command"])
    on_command_line = [a.split("=", 1)[1] for a in argv if a.startswith("--basic-auth=")]
    from_env = environment_of(flower).get("FLOWER_BASIC_AUTH", "")
    auth = (on_command_line or [from_env])[0]
    matches = interpolations(auth)
    # Required (${VAR:?...}): compose refuses to start Flower without credentials.
    assert len(matches) == 1 and matches[0]["op"] == ":?", f"basic auth not required: {auth!r}"
    assert matches[0]["name"] == "FLOWER_BASIC_AUTH"
    assert re.fullmatch(r"[^:,]+:[^,]+(,[^:,]+:[^,]+)*", env_example["FLOWER_BASIC_AUTH"])
    # Flower listens on 5555 and that port is published.
    assert "--port=5555" in argv
    targets = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in flower.get("ports", [])]
    assert "5555" in targets


@pytest.mark.unit
def test_every_flower_variable_is_a_flower_option() -> None:
    """Flower takes FLOWER_<option> from its environment (all of .env) as that option:
    a FLOWER_* name in .env.example must be a Flower option, set on purpose."""
    from flower.options import options

    known = set(options._options)
    active, commented = parse_env_file(ENV_EXAMPLE.read_text())
    for name in {**active, **commented}:
        if name.startswith("FLOWER_"):
            option = name.removeprefix("FLOWER_").lower()
            assert {option, option.replace("_", "-")} & known, f"{name} is no Flower option"


# --- compose: environment -------------------------------------------------------------------


@pytest.mark.unit
def test_every_variable_is_listed_in_env_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    used = {m["name"] or m["bare"] for s in strings_in(compose) for m in interpolations(s)}
    assert used, "the compose file reads no variables"
    missing = sorted(used - set(env_example))
    assert not missing, f"used in docker-compose.yml, not set in .env.example: {missing}"


@pytest.mark.unit
def test_variable_defaults_agree(compose: dict[str, Any]) -> None:
    defaults: dict[str, set[str]] = {}
    for text in strings_in(compose):
        for m in interpolations(text):
            if m["op"] in (":-", "-"):
                defaults.setdefault(m["name"], set()).add(m["arg"])
    assert all(len(v) == 1 for v in defaults.values()), defaults


@pytest.mark.unit
def test_app_services_take_settings_from_env(services: dict[str, dict[str, Any]]) -> None:
    for name in ("migrate", "worker", "beat", "flower"):
        env_file = services[name].get("env_file")
        assert env_file in (".env", [".env"]), f"{name}: env_file {env_file!r}"


@pytest.mark.unit
def test_secrets_are_never_written_in_compose(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment_of(service).items():
            if SECRET_KEY.search(key):
                matches = interpolations(value)
                assert matches and all(m["op"] == ":?" for m in matches), (
                    f"{name}: {key} must come from .env as a required ${{VAR:?...}}"
                )
        for key, value in environment_of(service).items():
            if "://" in value:
                url = make_url(value) if value.startswith("postgresql") else None
                if url is not None and url.password:
                    assert interpolations(str(url.password)), f"{name}: {key} has a password"


@pytest.mark.unit
def test_urls_point_at_the_services(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    for name in ("migrate", "worker", "beat", "flower"):
        env = {k: interpolate(v, env_example) for k, v in environment_of(services[name]).items()}
        db = make_url(env["DATABASE_URL"])
        assert db.drivername == "postgresql+psycopg", name
        assert (db.host, db.port) == ("postgres", 5432), name
        assert db.username == env_example["POSTGRES_USER"], name
        assert db.password == env_example["POSTGRES_PASSWORD"], f"{name}: password not URL-safe?"
        assert db.database == env_example["POSTGRES_DB"], name
        assert db.host in services
        broker = env["CELERY_BROKER_URL"]
        assert re.fullmatch(r"redis://redis:6379/\d+", broker), f"{name}: {broker}"


# --- .env.example ---------------------------------------------------------------------------


def looks_like_a_real_secret(key: str, value: str) -> bool:
    """A value that is not empty, not a placeholder and not a file path (the file is the
    secret, as for SYNCQUEUE_SHEETS_CREDENTIALS_FILE, and it is mounted, never written here)."""
    if key.endswith(("_FILE", "_PATH")) or value.startswith("/"):
        return False
    return bool(value) and not PLACEHOLDER.search(value)


@pytest.mark.unit
def test_env_example_holds_no_real_secrets() -> None:
    text = ENV_EXAMPLE.read_text()
    active, commented = parse_env_file(text)
    problems = []
    for key, value in {**commented, **active}.items():
        if SECRET_KEY.search(key) and looks_like_a_real_secret(key, value):
            problems.append(f"{key} looks like a real secret; use a placeholder such as change-me")
        credentials = re.search(r"://([^/@\s]*):([^/@\s]+)@", value)
        if credentials and looks_like_a_real_secret("", credentials[2]):
            problems.append(f"{key}: a URL with a real-looking password")
    tokens = [
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"\"private_key\"",
        r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub token
        r"\bAIza[0-9A-Za-z_\-]{30,}",  # Google API key
        r"\bsk-[A-Za-z0-9]{20,}",
        r"(?<![A-Za-z0-9/+_-])(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[a-z])"
        r"(?=[A-Za-z0-9+/_-]*[A-Z])[A-Za-z0-9+/_-]{24,}",  # long mixed-case token
    ]
    for pattern in tokens:
        found = re.search(pattern, text)
        if found:
            problems.append(f"secret-looking text in .env.example: {found[0][:12]}...")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_env_example_mentions_every_setting_the_code_reads() -> None:
    """All settings come from environment variables: .env.example documents each."""
    text = ENV_EXAMPLE.read_text()
    read: set[str] = set()
    for path in (
        ROOT / "syncqueue_tasks" / "celery" / "config.py",
        ROOT / "syncqueue_tasks" / "settings.py",
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"(?:SYNCQUEUE|CELERY|GOOGLE)_[A-Z0-9_]+|DATABASE_URL", node.value)
            ):
                read.add(node.value)
    assert read
    missing = sorted(v for v in read if not re.search(rf"\b{v}\b", text))
    assert not missing, f"read by the code, not in .env.example: {missing}"


# --- Dockerfile and .dockerignore -----------------------------------------------------------


@pytest.mark.unit
def test_dockerfile_copy_sources_exist() -> None:
    problems = []
    copies = [(n, a) for n, a in dockerfile_instructions() if n in ("COPY", "ADD")]
    assert copies
    for instruction, arguments in copies:
        flags, sources, _ = copy_parts(arguments)
        if "from" in flags:
            continue  # from another stage or image, not the build context
        matched = 0
        for source in sources:
            if re.search(r"[*?\[]", source):
                # BuildKit allows a wildcard that matches nothing.
                hits = ROOT.glob(source)
                matched += sum(not is_dockerignored(str(p.relative_to(ROOT))) for p in hits)
                continue
            path = ROOT / source
            if not path.exists():
                problems.append(f"{instruction} {source}: no such file in the build context")
            elif is_dockerignored(source):
                problems.append(f"{instruction} {source}: excluded by .dockerignore")
            else:
                matched += 1
        if not matched:
            problems.append(f"{instruction} {arguments}: copies nothing")
    assert not problems, "\n".join(problems)


@pytest.mark.unit
def test_dockerfile_installs_the_package_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    names = [n for n, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim") or (
        names.count("FROM") == 1 and dict(instructions)["FROM"] == "python:3.11-slim"
    )
    install = next(
        i
        for i, (n, a) in enumerate(instructions)
        if n == "RUN" and re.search(r"pip install \.(\s|$)", a)
    )
    # Everything the wheel build reads is copied before `pip install .`.
    copied_before = {
        Path(src).name for n, a in instructions[:install] if n == "COPY" for src in copy_parts(a)[1]
    }
    project = pyproject()
    needed = {"pyproject.toml"}
    needed |= {f"{m}.py" for m in project["tool"]["setuptools"].get("py-modules", [])}
    setuptools = project["tool"]["setuptools"]
    needed |= {p.split(".")[0] for p in setuptools["packages"]}
    needed |= set(setuptools.get("package-dir", {}).values())  # e.g. migrations/, shipped inside
    assert needed <= copied_before, f"not copied before pip install: {needed - copied_before}"
    # Runtime files land in WORKDIR /app, where alembic and celery run.
    workdirs = [a for n, a in instructions if n == "WORKDIR"]
    assert workdirs[-1] == "/app"
    runtime = {
        Path(src).name for n, a in instructions[install:] if n == "COPY" for src in copy_parts(a)[1]
    }
    assert {"alembic.ini", "migrations", "celeryconfig.py"} <= runtime
    users = [a.split(":")[0] for n, a in instructions if n == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert names.index("USER") > install


@pytest.mark.unit
def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in (
        ".env",
        ".env.production",
        ".git/config",
        ".venv/bin/python",
        "syncqueue_tasks/__pycache__/x.pyc",
        ".syncqueue/workbook.xlsx",
    ):
        assert is_dockerignored(path), f"{path} would be sent to the build context"
    for path in (
        "pyproject.toml",
        "celeryconfig.py",
        "syncqueue_tasks/celery/tasks.py",
        "migrations/env.py",
        "alembic.ini",
        "README.md",
    ):
        assert not is_dockerignored(path), f"{path} is needed by the build"


# --- docker compose config (only where a Docker engine answers) -----------------------------


def docker_unavailable() -> str | None:
    """Why ``docker compose config`` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker CLI not found"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
        if info.returncode != 0:
            lines = (info.stderr or info.stdout).strip().splitlines()
            return f"Docker engine not reachable: {lines[-1] if lines else 'docker info failed'}"
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker did not answer: {exc}"
    if version.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


@pytest.mark.system
@pytest.mark.docker
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    # A copy, with .env.example as .env: the check never reads a developer's real .env.
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    example = parse_env_file(ENV_EXAMPLE.read_text())[0]
    env = {k: v for k, v in os.environ.items() if k not in example}
    result = subprocess.run(
        ["docker", "compose", "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

# syntax=docker/dockerfile:1
# syncqueue-tasks: one image for every role (migrate, worker, beat, flower); docker-compose.yml
# picks the role with `command:`. The default command is a worker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed uid/gid (match it when bind-mounting files from the host).
RUN groupadd --system --gid 10001 syncqueue \
 && useradd --system --uid 10001 --gid syncqueue --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin syncqueue

# Install the package from the repository with pip. Only what the wheel build needs is copied:
# celeryconfig.py is part of it (pyproject: py-modules = ["celeryconfig"]), and so are the
# migrations (installed as syncqueue_tasks/migrations, for `syncqueue migrate`). README* is a
# wildcard so the build works with or without a README (BuildKit allows an empty match).
WORKDIR /src
COPY pyproject.toml README* ./
COPY celeryconfig.py ./
COPY syncqueue_tasks ./syncqueue_tasks
COPY migrations ./migrations
RUN pip install . \
 && rm -rf /src

# Runtime files. Alembic runs from /app (alembic.ini: script_location = %(here)s/migrations).
# celeryconfig.py is installed as a module too; Celery imports its config module with the
# working directory first on sys.path, so /app/celeryconfig.py wins and can be bind-mounted.
WORKDIR /app
COPY alembic.ini celeryconfig.py ./
COPY migrations ./migrations

# Writable state (beat schedule file, local workbook) lives in /app/.syncqueue, the defaults of
# celeryconfig.beat_schedule_filename and SYNCQUEUE_WORKBOOK_PATH; compose mounts a named
# volume there, which inherits this ownership on first use.
RUN mkdir -p /app/.syncqueue && chown -R syncqueue:syncqueue /app/.syncqueue

USER syncqueue:syncqueue

CMD ["celery", "-A", "syncqueue_tasks.celery_app", "worker", "--loglevel=INFO"]

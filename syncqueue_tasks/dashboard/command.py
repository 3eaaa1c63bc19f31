"""``syncqueue dashboard``: the queue dashboard in the browser (its own module; cli registers it).

Imports nothing heavy at import time, so the rest of the CLI starts as fast as before.
"""

from __future__ import annotations

import click

from syncqueue_tasks.settings import get_settings


@click.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None,
    help="port [env SYNCQUEUE_DASHBOARD_PORT; default 8085; 0: a free one]",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
def dashboard(port: int | None, host: str) -> None:
    """Serve the queue dashboard (login required) until Ctrl-C."""
    from syncqueue_tasks.dashboard.server import bind, serve

    port = get_settings().dashboard.port if port is None else port
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (set SYNCQUEUE_DASHBOARD_PORT or --port)"
        ) from None
    serve(sock, echo=click.echo)

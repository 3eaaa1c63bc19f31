"""Serving the dashboard with uvicorn, on a socket bound before anything else starts."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from syncqueue_tasks.dashboard.auth import generate_password
from syncqueue_tasks.settings import get_settings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); raises ``OSError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(sock: socket.socket, echo: Callable[[str], None] = print) -> None:
    """Serve the dashboard on ``sock`` until SIGINT / SIGTERM.

    The password is ``SYNCQUEUE_DASHBOARD_PASSWORD``; unset, one is generated and printed here,
    once (it is not logged or stored anywhere).
    """
    import uvicorn

    from syncqueue_tasks.dashboard.app import DashboardConfig, create_app

    settings = get_settings()
    password = settings.dashboard.password or generate_password()
    app = create_app(
        DashboardConfig(
            password=password,
            secure_cookies=settings.dashboard.secure_cookies,
            refresh_seconds=settings.dashboard.refresh_seconds,
        )
    )
    host, port = sock.getsockname()[:2]
    where = f"[{host}]" if ":" in host else host
    echo(f"Dashboard on http://{where}:{port}/ (Ctrl-C stops)")
    if not settings.dashboard.password:
        echo(f"Password (generated for this run; set SYNCQUEUE_DASHBOARD_PASSWORD): {password}")
    # Logins and retries/discards are logged by the dashboard itself; no access log (the
    # record page's query string holds record ids).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # No proxy headers: a client could name any address in X-Forwarded-For and escape the
    # per-address login limit (behind a proxy, all clients then share one limit).
    config = uvicorn.Config(
        app, access_log=False, log_level="warning", server_header=False, proxy_headers=False
    )
    uvicorn.Server(config).run(sockets=[sock])

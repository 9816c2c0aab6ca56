"""Starting a server command (``rnnexp server``, ``dashboard``, ``serve``).

Its address is checked first: a server that cannot bind fails after its slow start,
with its own traceback, where this check names the option to change. Then the
server replaces this process, so that Ctrl-C and SIGTERM reach it directly.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Mapping

from rnnexp.errors import RnnexpError


def check_host_port(host: str, port: int) -> None:
    """``--host`` and ``--port`` could name an address (no binding tried); else RnnexpError."""
    if not 1 <= port <= 65535:
        raise RnnexpError(f"--port must lie in 1..65535, got {port}")
    if not host:
        raise RnnexpError("--host must not be empty")


def check_address(host: str, port: int) -> None:
    """``host:port`` can be bound now (as the server will bind it); else RnnexpError."""
    check_host_port(host, port)
    try:
        socket.create_server((host, port)).close()  # SO_REUSEADDR, as servers bind
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        why = "is in use" if in_use else f"cannot be bound: {exc.strerror or exc}"
        raise RnnexpError(
            f"--host {host} --port {port}: the address {why}; choose another --port"
        ) from None


def become_server(cmd: list[str], banner: str, env: Mapping[str, str] | None = None) -> None:
    """Print ``banner``, then replace this process by ``cmd`` (run by this interpreter)."""
    print(banner)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, dict(os.environ if env is None else env))

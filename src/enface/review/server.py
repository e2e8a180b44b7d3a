"""Running the review page: a socket on 127.0.0.1, a token, uvicorn, and what was saved.

:class:`ReviewServer` binds its socket when it is made (``port=0`` picks a free port), so
its URL is known before it serves; :meth:`ReviewServer.serve` blocks until Ctrl+C or
SIGTERM (uvicorn handles the signal and shuts down cleanly), :meth:`ReviewServer.start`
serves from a thread (tests, notebooks) until :meth:`ReviewServer.stop`.

The socket is made as a TCP socket (``IPPROTO_TCP``, not protocol 0): asyncio sets
``TCP_NODELAY`` on the connections it accepts only then, and without it every small
response after the first on a kept-alive connection waited ~40 ms for the client's delayed
ACK (Nagle's algorithm). A wildcard address (``0.0.0.0``, ``::``) is refused: the page
checks the ``Host`` header against the address it listens on, so the interface to serve
must be named (``--host 192.168.1.20``), and the printed URL is then one that works from
the other machines.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import socket
import threading
import time
from pathlib import Path

import uvicorn

from enface.review.app import create_app
from enface.review.cases import CaseService

__all__ = ["LOCAL_HOSTS", "ReviewServer"]

log = logging.getLogger(__name__)

LOCAL_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
"""Hosts that only this machine reaches; any other ``--host`` is warned about."""


def _bind_error(host: str, port: int, e: OSError) -> ValueError:
    """What to tell the user when ``bind`` fails: the host or the port, whichever is at fault."""
    reason = e.strerror or str(e)
    if isinstance(e, socket.gaierror):
        return ValueError(f"--host {host}: not an address or name of this machine ({reason}); choose another --host")
    if e.errno == errno.EADDRNOTAVAIL:
        return ValueError(f"--host {host}: {host} is not an address of this machine; choose another --host")
    if e.errno == errno.EADDRINUSE:
        return ValueError(f"cannot listen on {host}:{port}: the port is in use; choose another --port")
    if e.errno == errno.EACCES:
        return ValueError(f"cannot listen on {host}:{port}: not allowed (a port below 1024?); choose another --port")
    return ValueError(f"cannot listen on {host}:{port} ({reason}); check --host and --port")


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        ValueError: a port outside 0..65535, a wildcard or foreign host, a port in use (naming the option at fault).
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: a TCP port is 0..65535 (0: a free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see the module's docstring
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise _bind_error(host, port, e) from None
    if ipaddress.ip_address(sock.getsockname()[0]).is_unspecified:
        sock.close()
        raise ValueError(
            f"--host {host} listens on every interface, and the page would refuse the other machines' requests "
            "(it checks the Host header against the address it listens on): name the interface to serve "
            "(--host followed by this machine's address on that network, e.g. --host 192.168.1.20)"
        )
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


class ReviewServer:
    """The server of one review session.

    Args:
        service: the dataset's cases (and the grader's store).
        host: address to listen on; default only this machine.
        port: TCP port; 0 picks a free one.
        token: the session's secret (default: a new random one).

    Raises:
        ValueError: the address cannot be bound (the message names ``--host`` or ``--port``).
    """

    def __init__(self, service: CaseService, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.service = service
        self.host = host
        self.token = token or secrets.token_urlsafe(24)
        self.socket = _bind(host, port)
        if host not in LOCAL_HOSTS:
            log.warning(
                "listening on %s: other machines can reach this page; anyone with the token can read the "
                "dataset and write masks",
                host,
            )
        self.port = int(self.socket.getsockname()[1])
        self.started = time.time()
        shown = f"[{host}]" if ":" in host else host
        names = {f"{shown}:{self.port}"} | {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        app = create_app(service, self.token, tuple(sorted(names)))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL to open, with the token."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/?token={self.token}"

    def serve(self) -> None:
        """Serve until interrupted (Ctrl+C); the socket is closed afterwards."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> ReviewServer:
        """Serve from a background thread; returns when the server accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="enface-review", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start`."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def saved(self) -> list[Path]:
        """The mask files this session saved."""
        return list(self.service.store.saved)

    def summary(self) -> str:
        """What the session wrote, for the end of the command."""
        files = self.saved()
        if not files:
            return "nothing saved"
        lines = [f"saved {len(files)} mask file(s); log {self.service.log.path}"]
        lines += [f"  {p}" for p in files[:20]] + ([f"  ... ({len(files) - 20} more)"] if len(files) > 20 else [])
        return "\n".join(lines)

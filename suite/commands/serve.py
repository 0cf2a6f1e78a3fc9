"""``suite serve``: a local web page (and JSON API) predicting uploaded MRI images with a finished run's model.

The app is :func:`suite.serve.create_app`; this module binds the socket (so a port in use is one
error line, exit 2), starts uvicorn on it and prints the URL once it answers. Stopping: uvicorn
catches Ctrl-C and SIGTERM, finishes the requests in flight (5 s at most) and raises the signal
again, which the CLI turns into its one line and status 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys

from suite.errors import ConfigError

GRACEFUL_SHUTDOWN_S = 5


def main(args) -> int:
    import uvicorn

    from suite.runs import RunFolder
    from suite.serve import create_app

    RunFolder(args.run_dir)  # not a run folder: one error line before anything starts
    sock = bind(args.host, args.port)
    try:
        if not is_loopback(sock):
            print(f"warning: listening on {args.host}, reachable from other machines: anyone who can reach "
                  "this port can use the model; there is no authentication", file=sys.stderr, flush=True)
        app = create_app(args.run_dir)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        # SIGINT as Python's default even where a shell started us with it ignored (a background job):
        # uvicorn stops on it either way, and the stop then ends as the CLI's 130, not as a 0
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(_serve(uvicorn.Server(config), sock, url(args.host, sock)))
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        sock.close()
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one).

    Raises:
        ConfigError: the host does not resolve, or the address cannot be bound (in use, not ours).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` listens on a loopback address only (127.0.0.0/8, ::1)."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def url(host: str, sock: socket.socket) -> str:
    """The address to open: the host as given (an IPv6 one bracketed) with the port actually bound."""
    port = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard is no address to open
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


async def _serve(server, sock: socket.socket, address: str) -> None:
    """Run ``server`` on ``sock``; print ``address`` once it accepts connections."""
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        print(f"serving {address} (Ctrl-C stops)", flush=True)
    await task

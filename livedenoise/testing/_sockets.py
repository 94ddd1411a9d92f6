"""Sockets on loopback: the binding side binds on port 0 and the address is read back from it.

Asking the OS for a free port, releasing it and binding it again later (the old
``free_tcp_port()``) races with every other process on the machine; binding ``tcp://127.0.0.1:*``
and reading ``LAST_ENDPOINT`` does not. :func:`free_addr` remains for the one case where an
address must exist before anything here can bind it.
"""

from __future__ import annotations

import socket
import time

import zmq

LOOPBACK = "tcp://127.0.0.1:*"  # any free port on 127.0.0.1, chosen by the OS at bind time


def bind_socket(sock: zmq.Socket, address: str = LOOPBACK, timeout: float = 5.0) -> str:
    """Bind ``sock`` at ``address`` and return the real endpoint (the port the OS gave for ``:*``).

    Binding a fixed address again (a detector or daemon that "restarts" on the endpoint it had)
    may fail for a moment while the old socket's port is released: retried up to ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind(address)
            return sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def bind_detector(address: str = LOOPBACK, kind: int = zmq.PUSH, timeout: float = 5.0) -> tuple[zmq.Socket, str]:
    """A detector socket (PUSH, or PUB with ``kind``) bound at ``address``, and its real endpoint.

    Bind it first, then start the daemon on the endpoint: ``push, source = bind_detector()``.
    """
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        return sock, bind_socket(sock, address, timeout)
    except BaseException:
        sock.close()
        raise


def free_addr() -> str:
    """``tcp://127.0.0.1:<port>`` with a port that was free a moment ago (bound by the OS, then released).

    Only for a program that binds an address given on its command line and does not report the
    port it got (``docs/examples/publisher.py``; the benchmarks' ``serve``/``replay`` processes,
    which run at log level WARNING): the address must exist before that program binds it.
    Everything else binds :data:`LOOPBACK` and reads the address back.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def output_subscriber(
    ctx: zmq.Context, publish: str, topics: tuple[bytes, ...] = (b"denoised", b"stats")
) -> zmq.Socket:
    """A bare SUB socket on serve's ``topics`` at ``publish``, unbounded (no HWM drops): for
    benchmarks that time every receipt themselves (tests use :class:`Subscriber`)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(publish)
    return sub

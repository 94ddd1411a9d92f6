"""The pytest plugin of livedenoise (entry point ``pytest11``: ``livedenoise``): fixtures for real
models, files, sockets and daemons on loopback. Everything is real: ONNX graphs run by onnxruntime,
TIFF files written by tifffile, ZMQ sockets bound on port 0 with the address read back.

Fixtures
--------
``build_model(name=None, **options)``
    factory writing a small convolutional ONNX model (:func:`~livedenoise.testing.build_onnx_model`)
    into the test's tmp dir and returning its path.
``conv_model``
    the default: 3x3 conv + tanh, deterministic weights, dynamic N/H/W, a valid model card.
``write_tiff(frames, name)``
    factory writing a (T, H, W) stack as a multi-page TIFF and returning its path.
``frames_u2``
    a small (12, 72, 72) ``<u2`` stack from the project's simulator (session scope).
``detector(kind=zmq.PUSH)``
    factory: ``(socket, endpoint)`` of a detector socket bound on port 0, closed after the test.
``replayer(**ReplayConfig fields)``
    factory: a :class:`~livedenoise.testing.ReplayThread` bound on port 0, stopped after the test.
``subscriber(address, topics)``
    factory: a :class:`~livedenoise.testing.Subscriber`, closed after the test.
``daemon_factory(**ServeConfig fields)``
    factory: a started :class:`~livedenoise.daemon.Daemon` publishing on port 0, stopped after the test.
``dectris_sim(messages)``
    factory: LiberTEM's ``DectrisSim`` (the ``libertem-dectris`` package) replaying DECTRIS Stream v1
    ``messages`` (:func:`~livedenoise.sim.dectris_v1_messages`) from a dump file in the test's tmp
    dir, bound on port 0 (``get_uri()``); the test is skipped without the package.
``dectris_v2_sender()``
    factory: a :class:`~livedenoise.sim.DectrisV2Sender` (Stream v2, PUSH on port 0), closed after the test.
``merlin_sender()``
    factory: a :class:`~livedenoise.sim.MerlinSender` (a Merlin's data port, TCP on 127.0.0.1 port 0),
    closed after the test; the test is skipped without libertem-qd-mpx (the ``merlin`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from ._models import build_onnx_model
from ._replay import ReplayThread
from ._sockets import LOOPBACK, bind_detector
from ._subscriber import Subscriber


@pytest.fixture
def build_model(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10**6))

    def build(name: str | None = None, **options) -> Path:
        return build_onnx_model(tmp_path / (name or f"model{next(counter)}.onnx"), **options)

    return build


@pytest.fixture
def conv_model(build_model: Callable[..., Path]) -> Path:
    return build_model("conv.onnx")


@pytest.fixture
def write_tiff(tmp_path: Path) -> Callable[..., Path]:
    import tifffile

    def write(frames: np.ndarray, name: str = "stack.tif") -> Path:
        path = tmp_path / name
        tifffile.imwrite(path, frames)
        return path

    return write


@pytest.fixture(scope="session")
def frames_u2() -> np.ndarray:
    from livedenoise.sim import SimConfig, simulate_movie

    return simulate_movie(SimConfig(size=72, frames=12, n_single=4, seed=3)).noisy_as("<u2")


@pytest.fixture
def detector() -> Iterator[Callable[..., tuple[zmq.Socket, str]]]:
    """Factory: ``detector(kind=zmq.PUSH, address=LOOPBACK)`` -> ``(socket, endpoint)``, bound now
    (connect the daemon to ``endpoint`` next) and closed after the test."""
    socks: list[zmq.Socket] = []

    def make(kind: int = zmq.PUSH, address: str = LOOPBACK) -> tuple[zmq.Socket, str]:
        sock, endpoint = bind_detector(address, kind)
        socks.append(sock)
        return sock, endpoint

    yield make
    for s in socks:
        s.close()


@pytest.fixture
def replayer() -> Iterator[Callable[..., ReplayThread]]:
    """Factory: ``replayer(**ReplayConfig fields)`` -> a bound, not yet started
    :class:`ReplayThread` (``bind`` defaults to port 0: read ``.endpoint``); stopped after the test."""
    threads: list[ReplayThread] = []

    def make(**fields) -> ReplayThread:
        thread = ReplayThread(**fields)
        threads.append(thread)
        return thread

    yield make
    for t in threads:
        t.close()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory: ``subscriber(address, topics=(b"",))`` -> :class:`Subscriber`, closed after the test."""
    subs: list[Subscriber] = []

    def make(address: str, topics: tuple[bytes, ...] = (b"",)) -> Subscriber:
        sub = Subscriber(address, topics)
        subs.append(sub)
        return sub

    yield make
    for s in subs:
        s.close()


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., object]]:
    """Factory: ``daemon_factory(model=..., source=..., **ServeConfig fields)`` -> a started
    :class:`livedenoise.daemon.Daemon` publishing on port 0 (read ``publish_address``); stopped
    after the test. Without an ``engine`` group: the CPU and no warm-up."""
    from livedenoise.daemon import Daemon, ServeConfig
    from livedenoise.engine import EngineConfig

    daemons: list[Daemon] = []

    def make(**fields) -> Daemon:
        fields.setdefault("publish", LOOPBACK)
        fields.setdefault("stats_interval", 0.1)
        fields.setdefault("engine", EngineConfig(provider="cpu", shapes=()))
        d = Daemon(ServeConfig(**fields))
        daemons.append(d)
        d.start()
        return d

    yield make
    for d in daemons:
        d.stop(timeout=10)


@pytest.fixture
def dectris_sim(tmp_path: Path) -> Callable[..., object]:
    """Factory: ``dectris_sim(messages, dwelltime_us=None)`` -> a ``libertem_dectris.DectrisSim``
    replaying the Stream v1 ``messages``: send with ``send_headers()``, ``send_frames()``, ``send_footer()``."""
    libertem_dectris = pytest.importorskip("libertem_dectris")
    from livedenoise.sim import write_dectris_dump

    counter = iter(range(10**6))

    def make(messages, dwelltime_us: int | None = None):
        path = write_dectris_dump(tmp_path / f"dectris{next(counter)}.dump", messages)
        return libertem_dectris.DectrisSim("tcp://127.0.0.1", str(path), dwelltime=dwelltime_us, random_port=True)

    return make


@pytest.fixture
def dectris_v2_sender() -> Iterator[Callable[..., object]]:
    """Factory: ``dectris_v2_sender()`` -> a bound :class:`~livedenoise.sim.DectrisV2Sender`, closed after the test."""
    from livedenoise.sim import DectrisV2Sender

    senders: list[DectrisV2Sender] = []

    def make() -> DectrisV2Sender:
        sender = DectrisV2Sender()
        senders.append(sender)
        return sender

    yield make
    for s in senders:
        s.close(linger=0)


@pytest.fixture
def merlin_sender() -> Iterator[Callable[..., object]]:
    """Factory: ``merlin_sender()`` -> a listening :class:`~livedenoise.sim.MerlinSender`, closed after
    the test (its receiver then sees the stream end). Skips the test without libertem-qd-mpx."""
    pytest.importorskip("libertem_qd_mpx")
    from livedenoise.sim import MerlinSender

    senders: list[MerlinSender] = []

    def make() -> MerlinSender:
        sender = MerlinSender()
        senders.append(sender)
        return sender

    yield make
    for s in senders:
        s.close()

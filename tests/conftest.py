"""Shared fixtures: free TCP ports, small real ONNX models with a model card, real TIFF files.

Everything here is real: ONNX graphs built with ``onnx.helper`` and run by onnxruntime, TIFF
files written by tifffile, ZMQ addresses on 127.0.0.1 with ports the OS says are free.
Other test modules reuse these fixtures; keep them generic.

Fixtures
--------
``free_port()`` / ``free_addr()``
    factories: a free TCP port on 127.0.0.1 / ``"tcp://127.0.0.1:<port>"``.
``build_model(**options)``
    factory writing a small convolutional ONNX model (see :func:`build_onnx_model`) into the
    test's tmp dir and returning its path.
``conv_model``
    the default: 3x3 conv + tanh, deterministic weights, dynamic N/H/W, a valid model card.
``write_tiff(frames, name)``
    factory writing a (T, H, W) stack as a multi-page TIFF and returning its path.
``frames_u2``
    a small (12, 72, 72) ``<u2`` stack from the project's simulator.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from livedenoise.engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelCard, Normalisation

DEFAULT_NORM = Normalisation(offset=2.0, scale=0.25)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_onnx_model(
    path: Path,
    *,
    card: ModelCard | None = None,
    with_card: bool = True,
    width: int = 1,
    depth: int = 1,
    fixed_hw: tuple[int, int] | None = None,
    fail_above: float | None = None,
    seed: int = 0,
    preset: str = "test-conv",
) -> Path:
    """Write a small real convolutional model following the livedenoise tensor contract.

    Input ``noisy`` float32 ``[N, input_frames, H, W]`` (dynamic N, H, W unless ``fixed_hw``),
    output ``clean`` float32 ``[N, 1, H, W]`` = tanh of a stack of 3x3 'same' convolutions.

    Parameters
    ----------
    card : the model card (default: preset ``preset``, :data:`DEFAULT_NORM`, size multiple 8).
    with_card : False writes no ``livedenoise`` metadata (the daemon must refuse the model).
    width, depth : ``depth`` 3x3 convs with ``width`` hidden channels; large values make a
        deliberately slow (but sleep-free) model for drop tests.
    fixed_hw : declare fixed H and W: frames of another shape fail inside onnxruntime.
    fail_above : the model raises at run time (Gather index out of range) when any input pixel
        exceeds this value: a model that fails on some batches and not on others.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    card = card or ModelCard(preset=preset, normalisation=DEFAULT_NORM)
    cin = card.input_frames
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = INPUT_NAME
    chans = [cin] + [width] * (depth - 1) + [1]
    for i in range(depth):
        w = rng.normal(0, 1.0 / np.sqrt(9 * chans[i]), (chans[i + 1], chans[i], 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, chans[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], pads=[1, 1, 1, 1]))
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"]))
            y = f"relu{i}"
        x = y
    if fail_above is not None:
        # index = (max(x) > fail_above) * 1000 into a 1-element table: out of range -> run-time error
        inits += [
            numpy_helper.from_array(np.array([fail_above], np.float32), "thr"),
            numpy_helper.from_array(np.array([1000], np.int64), "big"),
            numpy_helper.from_array(np.zeros(1, np.float32), "table"),
        ]
        nodes += [
            helper.make_node("ReduceMax", [INPUT_NAME], ["mx"], keepdims=0),
            helper.make_node("Greater", ["mx", "thr"], ["gt"]),
            helper.make_node("Cast", ["gt"], ["gt64"], to=TensorProto.INT64),
            helper.make_node("Mul", ["gt64", "big"], ["idx"]),
            helper.make_node("Gather", ["table", "idx"], ["zero"]),
            helper.make_node("Add", [x, "zero"], ["guarded"]),
        ]
        x = "guarded"
    nodes.append(helper.make_node("Tanh", [x], [OUTPUT_NAME]))
    h, w = fixed_hw if fixed_hw else ("H", "W")
    graph = helper.make_graph(
        nodes,
        preset,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", cin, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, h, w])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if with_card:
        helper.set_model_props(model, {METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def free_port() -> Callable[[], int]:
    return free_tcp_port


@pytest.fixture
def free_addr() -> Callable[[], str]:
    return lambda: f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def build_model(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10**6))

    def build(name: str | None = None, **options) -> Path:
        return build_onnx_model(tmp_path / (name or f"model{next(counter)}.onnx"), **options)

    return build


@pytest.fixture
def conv_model(build_model) -> Path:
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

    movie = simulate_movie(SimConfig(size=72, frames=12, n_single=4, seed=3))
    return movie.noisy_as("<u2")


# --------------------------------------------------------------------------- live pipeline helpers


def bind_detector(address: str, kind: int = zmq.PUSH, timeout: float = 5.0) -> zmq.Socket:
    """A detector socket bound at ``address``; retries while the port is still being released."""
    deadline = time.monotonic() + timeout
    while True:
        sock = zmq.Context.instance().socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(address)
            return sock
        except zmq.ZMQError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)




class Subscriber:
    """A SUB socket on the daemon's output, with timeouts on every receive (tests never hang)."""

    def __init__(self, address: str, topics: tuple[bytes, ...] = (b"",)):
        import zmq

        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # keep everything: tests count every frame
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.sock.connect(address)
        self.last_stats: dict | None = None
        self._pending: list = []  # frames read while waiting for stats, handed out by collect()

    def recv(self, timeout: float = 5.0):
        """The next message as :class:`livedenoise.protocol.Published`, or None after ``timeout``."""
        from livedenoise.protocol import decode_published

        if not self.sock.poll(int(timeout * 1000)):
            return None
        msg = decode_published(self.sock.recv_multipart())
        if msg.topic == b"stats":
            self.last_stats = msg.header
        return msg

    def wait_ready(self, timeout: float = 10.0) -> dict:
        """Block until a stats message arrives: the subscription is then in effect."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.2)
            if msg is not None and msg.topic == b"stats":
                return msg.header
        raise AssertionError("no stats message from the daemon")

    def collect(self, n_denoised: int, timeout: float = 20.0, idle: float | None = None):
        """Messages until ``n_denoised`` denoised frames arrived (or ``timeout``, or ``idle``
        seconds without a denoised frame). Returns ``(denoised, raw)`` lists."""
        denoised, raw = [], []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while len(denoised) < n_denoised and time.monotonic() < deadline:
            if idle is not None and time.monotonic() - last > idle:
                break
            msg = self._pending.pop(0) if self._pending else self.recv(0.2)
            if msg is None:
                continue
            if msg.topic == b"denoised":
                denoised.append(msg)
                last = time.monotonic()
            elif msg.topic == b"raw":
                raw.append(msg)
        return denoised, raw

    def stats_until(self, predicate, timeout: float = 10.0) -> dict:
        """Read until a stats header satisfies ``predicate``; return it (AssertionError if never)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(0.2)
            if msg is None:
                continue
            if msg.topic != b"stats":
                self._pending.append(msg)
            elif predicate(msg.header):
                return msg.header
        raise AssertionError(f"stats never satisfied the condition; last: {self.last_stats}")

    def close(self) -> None:
        self.sock.close()


def reference_denoise(model_path: Path, frame: np.ndarray) -> np.ndarray:
    """What ``serve`` must publish for one single-frame model input, computed independently:
    model-card normalisation, reflect padding to the size multiple, a plain onnxruntime run,
    crop, and the [-1, 1] -> [0, 1] display mapping."""
    import onnxruntime as ort

    from livedenoise.engine import normalise, to_display

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(sess.get_modelmeta().custom_metadata_map)
    x = normalise(np.asarray(frame), card.normalisation)
    m = card.size_multiple
    h, w = x.shape
    x = np.pad(x, ((0, -h % m), (0, -w % m)), mode="reflect")
    (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x[None, None]})
    return to_display(y[0, 0, :h, :w])


@pytest.fixture
def subscriber():
    """Factory: ``subscriber(address)`` -> :class:`Subscriber`, closed after the test."""
    subs = []

    def make(address: str, topics: tuple[bytes, ...] = (b"",)) -> Subscriber:
        sub = Subscriber(address, topics)
        subs.append(sub)
        return sub

    yield make
    for s in subs:
        s.close()


@pytest.fixture
def daemon_factory():
    """Factory: ``daemon_factory(model=..., source=..., **ServeConfig fields)`` -> a started
    :class:`livedenoise.daemon.Daemon` publishing on a free port; stopped after the test. Without
    an ``engine`` group: the CPU and no warm-up."""
    from livedenoise.daemon import Daemon, ServeConfig
    from livedenoise.engine import EngineConfig

    daemons = []

    def make(**fields) -> Daemon:
        fields.setdefault("publish", "tcp://127.0.0.1:*")
        fields.setdefault("stats_interval", 0.1)
        fields.setdefault("engine", EngineConfig(provider="cpu", shapes=()))
        d = Daemon(ServeConfig(**fields))
        daemons.append(d)
        d.start()
        return d

    yield make
    for d in daemons:
        d.stop(timeout=10)

"""Test helpers for livedenoise and the programs around it: small real ONNX models, detectors and
subscribers on loopback, simulated detectors on a thread, and the addresses child processes
bound. Shipped as a pytest plugin (:mod:`livedenoise.testing.plugin`, registered through the
``pytest11`` entry point) whose fixtures use these helpers.

Sockets bind ``tcp://127.0.0.1:*`` and read the real address back; the side that connects
starts after the side that binds::

    push, source = bind_detector()        # the detector first, on port 0
    daemon = daemon_factory(model=conv_model, source=source, pull=True)
    sub = subscriber(daemon.publish_address)

Runtime code never imports this package (import-linter contracts in pyproject.toml).
"""

from ._detectors import send_in_thread, virtual_reference
from ._models import DEFAULT_NORM, build_onnx_model, reference_denoise
from ._processes import REPLAY_BIND, SERVE_PUBLISH, read_address
from ._replay import ReplayThread
from ._sockets import LOOPBACK, bind_detector, bind_socket, free_addr, output_subscriber
from ._subscriber import Subscriber

__all__ = [
    "DEFAULT_NORM",
    "LOOPBACK",
    "REPLAY_BIND",
    "SERVE_PUBLISH",
    "ReplayThread",
    "Subscriber",
    "bind_detector",
    "bind_socket",
    "build_onnx_model",
    "free_addr",
    "output_subscriber",
    "read_address",
    "reference_denoise",
    "send_in_thread",
    "virtual_reference",
]

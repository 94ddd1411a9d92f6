"""Session runs through an IOBinding with OrtValues kept on the device (GPU providers), and the
CUDA graphs captured on them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._modelcard import INPUT_NAME, OUTPUT_NAME

MAX_CACHED_SHAPES = 4  # input buffers (and device bindings) kept for this many frame shapes
CUDA_GRAPH_RUNS_BEFORE_CAPTURE = 2  # onnxruntime's CUDA EP captures on the third run of a graph id


@dataclass(slots=True)
class Binding:
    binding: Any
    input: Any  # OrtValue on the device, fixed address
    output: Any
    run_options: Any
    graph_id: int | None = None
    runs: dict[int, int] = field(default_factory=dict)  # thread id -> runs on it (graph capture is per thread)


class BoundRunner:
    """``session.run`` through an IOBinding: the input is copied into an OrtValue kept on the
    device per run shape, the output is written into another and copied back once.

    With CUDA graphs, each shape given to :meth:`add_graph` gets its graph id; its OrtValues are
    never freed (the captured graph holds their addresses). onnxruntime captures on the third run
    of a graph id *on a thread* (the graph lives in a per-thread context): the first run on a new
    thread replays the extra runs there, so a graph warmed up on one thread also serves another.
    """

    def __init__(self, session, device: str, device_id: int, graphs: bool):
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        self.device = device
        self.device_id = device_id
        self.graphs = graphs
        self._graph_bindings: dict[tuple[int, ...], Binding] = {}
        self._bindings: OrderedDict[tuple[int, ...], Binding] = OrderedDict()
        self._plain = ort.RunOptions()
        if graphs:
            self._plain.add_run_config_entry("gpu_graph_id", "-1")  # no capture/replay for this run

    def _new(self, shape: tuple[int, ...], run_options, graph_id: int | None) -> Binding:
        ort = self._ort
        out_shape = (shape[0], 1, *shape[2:])
        x = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)
        y = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32, self.device, self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, x)
        binding.bind_ortvalue_output(OUTPUT_NAME, y)
        return Binding(binding, x, y, run_options, graph_id)

    def add_graph(self, shape: tuple[int, ...]) -> None:
        if shape in self._graph_bindings:
            return
        graph_id = len(self._graph_bindings) + 1  # 0 is onnxruntime's own, -1 means none
        options = self._ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._graph_bindings[shape] = self._new(shape, options, graph_id)

    def has_graph(self, shape: tuple[int, ...]) -> bool:
        return shape in self._graph_bindings

    def _binding(self, shape: tuple[int, ...]) -> Binding:
        b = self._graph_bindings.get(shape)
        if b is not None:
            return b
        b = self._bindings.get(shape)
        if b is None:
            b = self._new(shape, self._plain, None)
            self._bindings[shape] = b
            while len(self._bindings) > MAX_CACHED_SHAPES:
                self._bindings.popitem(last=False)
        else:
            self._bindings.move_to_end(shape)
        return b

    def run(self, x: np.ndarray) -> np.ndarray:
        b = self._binding(x.shape)
        b.input.update_inplace(x)
        if b.graph_id is None:
            self.session.run_with_iobinding(b.binding, b.run_options)
        else:
            tid = threading.get_ident()
            done = b.runs.get(tid, 0)
            # the regular runs onnxruntime wants before capturing, then the capture; on a thread
            # that has not captured this graph yet (same input: the result is the same each time)
            for _ in range(max(1, CUDA_GRAPH_RUNS_BEFORE_CAPTURE + 1 - done)):
                self.session.run_with_iobinding(b.binding, b.run_options)
            b.runs[tid] = max(done + 1, CUDA_GRAPH_RUNS_BEFORE_CAPTURE + 1)
        b.binding.synchronize_outputs()
        out = b.output.numpy()  # from the device: a new host array; on the CPU: the bound memory itself
        return out.copy() if self.device == "cpu" else out

"""The inference stage: an onnxruntime session that turns batches of raw frames into denoised ones.

The engine reads the :class:`~livedenoise.engine.ModelCard` from the model file, normalises
frames exactly as the trainer did (:func:`~livedenoise.engine.normalise`, written straight into
a preallocated input buffer: the only copy of the pixels), pads by reflection to the model's
``size_multiple``, runs the session and crops back. A batch may mix frame shapes: it is grouped by
shape, so any frame size the model accepts works without a restart.

Everything is vectorised over a group of frames of one shape: the frames are cast into the input
buffer with one ``np.stack`` and normalised there in place (:func:`~livedenoise.engine.normalise`
on the whole group: the same arithmetic per pixel as frame by frame, 4.0 against 6.5 us a frame
at 128² measured here); per frame only a view is taken. Frames with NaN/inf pixels are rejected (``malformed``) with one
reduction over the group, and a group that fails inside onnxruntime is reported (``failed``)
without affecting the other groups.

Multi-frame models (``input_frames = k > 1``, causal): channel ``k - 1`` is the current frame and
channel ``k - 1 - j`` the frame ``j`` frames earlier *in the same series as received by the
engine*; missing history at the start of a series repeats the oldest frame available. A series
restarts where ``infer(..., restart=...)`` says so (the daemon: the first frame after a ``start``
message or a change of series id): its history is dropped *before* that frame, frames earlier in
the same batch still feeding the run they belong to.

Memory and start-up (:class:`EngineConfig`; measured figures in ``docs/benchmarks.md``):

* one session run takes at most ``max_batch_pixels`` padded pixels (``batch * H * W``): a 1024²
  frame runs alone, 512² frames four at a time, 128² frames up to ``max_batch``;
* stride-1 ``ConvTranspose`` nodes (all of the ``paper`` preset's "valid" pairs) are rewritten as
  the equivalent ``Conv`` at load (:func:`rewrite_transposed_convs`, needs the ``onnx`` package):
  onnxruntime's CPU ``ConvTranspose`` expands a ``Cout*k*k x H*W`` column buffer (1.6 GB for a
  7x7 at 1024²), its ``Conv`` works in bounded tiles; same function, faster, a third of the memory;
* the CPU arena grows by what is asked (``kSameAsRequested``), not to the next power of two, and
  the memory pattern is off on the CPU (its planned block came on top of the arena's chunks);
* :meth:`Engine.warm_up` runs the configured frame shapes once at start, largest batch first, so the
  memory is reserved and (on CUDA) cuDNN has chosen its algorithms before the first real frame.

GPU (``provider="cuda"`` or ``"tensorrt"``): inputs and outputs go through an ``IOBinding`` with
OrtValues kept on the device per run shape; every batch runs at the frame size's batch cap
(``fixed_batch``: one device shape per frame size, whatever a live stream's batch sizes);
``cuda_graph`` captures one CUDA graph per warmed-up shape (partial batches are padded to the
fixed batch); ``fp16`` converts the model and checks it against fp32 at load
(:attr:`Engine.fp16_max_abs_diff`), keeping fp32 when it is off by more than ``fp16_tolerance``;
TensorRT builds its engines into ``trt_cache`` once. What the session really
runs on is :attr:`Engine.providers` (``session.get_providers()``), logged and published.

Examples
--------
>>> engine = Engine(model_path)                                   # doctest: +SKIP
>>> result = engine.infer([frame_a, frame_b], series=[1, 1])      # doctest: +SKIP
>>> result.outputs[0].shape == frame_a.shape                      # doctest: +SKIP
True
>>> Engine(model_path, EngineConfig(provider="cuda", fp16=True, cuda_graph=True,
...                                 shapes=((512, 512),))).describe()   # doctest: +SKIP
{'provider': 'CUDAExecutionProvider', 'precision': 'fp16', 'fp16_max_abs_diff': 0.004, ...}
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError, ModelError, short_error
from ._config import EngineConfig
from ._history import CausalHistory
from ._modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, normalise, to_display
from ._providers import CPU, GPU_PROVIDERS, provider_list, resolve_provider
from ._runner import MAX_CACHED_SHAPES, BoundRunner
from ._session import create_session, load_proto, session_options
from ._transforms import (
    has_unit_stride_transposed_convs,
    max_display_diff,
    rewrite_transposed_convs,
    to_fp16,
    validation_batch,
)

log = logging.getLogger("livedenoise.engine")



def resolve_model(model: str | Path | None = None) -> Path:
    """A model file: a path as it is, or the name of a model shipped inside the package (``default``,
    ``rt``, ``general`` ...: ``livedenoise/models/NAME.onnx``) where no such file is here; none: ``default``."""
    if model is None:
        return default_model_path()
    path = Path(model)
    if len(path.parts) == 1 and path.suffix == "" and not path.exists():
        shipped = default_model_path().with_name(f"{path.name}.onnx")
        if shipped.is_file():
            return shipped
    return path


def default_model_path() -> Path:
    """The model shipped inside the package (``livedenoise/models/default.onnx``)."""
    res = resources.files("livedenoise") / "models" / "default.onnx"
    if not res.is_file():
        raise ModelError(
            "no default model in this installation (livedenoise/models/default.onnx): "
            "pass --model FILE.onnx (make one with `livedenoise train`)"
        )
    return Path(str(res))


@dataclass(slots=True)
class InferResult:
    """Per input frame: the denoised ``(H, W)`` float32 frame in [0, 1], or ``None``.

    ``errors`` lists ``(index, kind, message)`` for the frames without output, ``kind`` being
    ``"malformed"`` (non-finite pixels) or ``"failed"`` (onnxruntime raised on its group).
    """

    outputs: list[np.ndarray | None]
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def _reflect_index(n: int, start: int, stop: int) -> np.ndarray:
    """Source indices for positions ``start..stop-1`` of an axis of length ``n`` reflected
    (``numpy.pad`` mode ``reflect``, edge not repeated), repeated as often as needed."""
    pos = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(pos)
    period = 2 * (n - 1)
    m = pos % period
    return np.where(m < n, m, period - m)



# ---------------------------------------------------------------------------------- the engine


class Engine:
    """An onnxruntime session with the model card's normalisation, padding and batching.

    Parameters
    ----------
    model : path of an ONNX file carrying a ``livedenoise`` model card.
    config : :class:`EngineConfig` (default: all defaults).
    provider, max_batch, threads, spin : override the fields of ``config`` of the same name
        (the keyword form existing callers use).

    Attributes reported (logs, ``stats``): :attr:`provider` (the first of :attr:`providers`, the
    session's real list), :attr:`precision` (``"fp32"`` or ``"fp16"``), :attr:`fp16_max_abs_diff`,
    :attr:`rewritten` (ConvTranspose nodes rewritten), :attr:`cpu_arena`, :attr:`io_binding`,
    :attr:`cuda_graph`; :meth:`describe` gives them all as a dict.

    Raises
    ------
    ModelError : the file is missing, unreadable, not ONNX, or has no valid model card.
    LivedenoiseError : a provider was asked for that the session does not get.
    """

    def __init__(
        self,
        model: str | Path,
        config: EngineConfig | None = None,
        *,
        provider: str | None = None,
        max_batch: int | None = None,
        threads: int | None = None,
        spin: bool | None = None,
    ):
        import onnxruntime as ort

        overrides = {"provider": provider, "max_batch": max_batch, "threads": threads, "spin": spin}
        config = dataclasses.replace(config or EngineConfig(), **{k: v for k, v in overrides.items() if v is not None})
        self.config = config
        self.path = resolve_model(model)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        self.max_batch = int(config.max_batch)
        providers = resolve_provider(config.provider)
        gpu = providers[0] in GPU_PROVIDERS  # asked for (the session may still fall back)

        proto, file_card = load_proto(self.path)
        self.rewritten = rewrite_transposed_convs(proto) if proto is not None and config.optimise_graph else 0
        if self.rewritten:
            log.info("rewrote %d stride-1 ConvTranspose nodes as Conv (bounded memory)", self.rewritten)
        source: str | bytes = proto.SerializeToString() if self.rewritten else str(self.path)
        self.cpu_arena = True if config.cpu_arena is None else bool(config.cpu_arena)
        providers_arg = provider_list(providers, config, file_card)
        probing = config.provider is None and gpu

        def new_session(source: str | bytes, probe: bool = probing) -> Any:
            opts = session_options(ort, config, self.cpu_arena, gpu)
            return create_session(ort, source, opts, providers_arg, probe, self.path)

        self.session = new_session(source)
        meta = self.session.get_modelmeta()
        self.card = ModelCard.from_metadata(meta.custom_metadata_map, source=str(self.path))
        if (
            config.cpu_arena is None
            and not self.rewritten
            and self.session.get_providers()[0] == CPU
            and has_unit_stride_transposed_convs(proto, self.card)
        ):
            # ConvTranspose's column buffers (GBs for large frames) fragment the arena: measured
            # 4.2-5.2 GiB resident for the paper preset at 1024^2 with it, 2.8-3.1 without
            log.warning("stride-1 ConvTranspose left in the model (onnx missing or optimise_graph off): "
                        "CPU arena off to bound memory, runs are slower")
            self.cpu_arena = False
            self.session = new_session(source)
        self.providers: list[str] = list(self.session.get_providers())
        self.provider = self.providers[0]
        if config.provider and self.provider != providers[0]:
            raise LivedenoiseError(
                f"provider {config.provider!r} requested but the session runs on {self.provider}"
                " (no usable device?)"
            )
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs or len(inputs[INPUT_NAME].shape) != 4:
            raise ModelError(
                f"{self.path} does not follow the tensor contract: need input {INPUT_NAME!r} "
                f"[N, C, H, W] and output {OUTPUT_NAME!r}"
            )
        self.name = self.card.preset or self.path.stem
        self._k = int(self.card.input_frames)
        self._mult = max(1, int(self.card.size_multiple))
        self._buffers: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._history = CausalHistory(self._k)
        self.run_shapes: Counter[tuple[int, ...]] = Counter()  # session runs per input shape
        self.warmed: set[tuple[int, ...]] = set()  # input shapes run by warm_up

        self.precision = "fp32"
        self.fp16_max_abs_diff: float | None = None
        on_gpu = self.provider in GPU_PROVIDERS
        self.io_binding = bool(config.io_binding if config.io_binding is not None else on_gpu)
        self.cuda_graph = bool(config.cuda_graph and on_gpu and self.io_binding)
        if config.fp16:
            self._switch_to_fp16(ort, proto, new_session)
        del proto, source  # the parsed model (45 MB for paper) is the session's now
        self._runner: BoundRunner | None = None
        if self.io_binding:
            device = "cuda" if on_gpu else "cpu"
            self._runner = BoundRunner(self.session, device, config.device_id if on_gpu else 0, self.cuda_graph)
            for shape in config.shapes if self.cuda_graph else ():
                self._runner.add_graph(self._run_shape(shape))
        self._fixed_batch = self._runner is not None and (on_gpu if config.fixed_batch is None else config.fixed_batch)
        log.info("model %s (preset %s) on %s", self.path, self.name, self.provider)
        log.info("engine: %s", self.describe())

    # ------------------------------------------------------------------ construction

    def _switch_to_fp16(self, ort: Any, proto: Any, new_session: Callable[..., Any]) -> None:
        """Convert to fp16, compare with the fp32 session on :func:`validation_batch`, keep the
        fp16 session only within ``fp16_tolerance``."""
        if proto is None:
            log.warning("fp16 needs the onnx package and a readable model: running fp32")
            return
        run_options = ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", "-1")  # plain runs, no capture
        try:
            session16 = new_session(to_fp16(proto).SerializeToString(), probe=False)
            x = validation_batch(self.card)
            (ref,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x}, run_options)
            (got,) = session16.run([OUTPUT_NAME], {INPUT_NAME: x}, run_options)
        except Exception as exc:  # noqa: BLE001 - conversion or an fp16 kernel missing on this provider
            log.warning("fp16 model unusable here (%s): running fp32", short_error(exc))
            return
        self.fp16_max_abs_diff = max_display_diff(ref, got)
        if not self.fp16_max_abs_diff <= self.config.fp16_tolerance:
            log.warning(
                "fp16 differs from fp32 by %.3g (> %.3g) on the validation frames: running fp32",
                self.fp16_max_abs_diff, self.config.fp16_tolerance,
            )
            return
        log.info("fp16: max |fp16 - fp32| = %.2e on the validation frames", self.fp16_max_abs_diff)
        self.session = session16
        self.providers = list(session16.get_providers())
        self.provider = self.providers[0]
        self.precision = "fp16"

    def describe(self) -> dict[str, Any]:
        """What this engine really runs: provider list, precision, memory and GPU options."""
        return {
            "provider": self.provider,
            "providers": self.providers,
            "precision": self.precision,
            "fp16_max_abs_diff": self.fp16_max_abs_diff,
            "rewritten_conv_transpose": self.rewritten,
            "cpu_arena": self.cpu_arena,
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "fixed_batch": self._fixed_batch,
            "max_batch": self.max_batch,
            "max_batch_pixels": self.config.max_batch_pixels,
        }

    # ------------------------------------------------------------------ helpers

    def padded_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m = self._mult
        return (-(-shape[0] // m) * m, -(-shape[1] // m) * m)

    def batch_cap(self, shape: tuple[int, int]) -> int:
        """Frames of ``shape`` one session run takes at most (``max_batch``, ``max_batch_pixels``)."""
        hp, wp = self.padded_shape(shape)
        return max(1, min(self.max_batch, self.config.max_batch_pixels // (hp * wp)))

    def _run_shape(self, shape: tuple[int, int], n: int | None = None) -> tuple[int, int, int, int]:
        hp, wp = self.padded_shape(shape)
        return (self.batch_cap(shape) if n is None else n, self._k, hp, wp)

    def _buffer(self, shape: tuple[int, int]) -> np.ndarray:
        padded = self.padded_shape(shape)
        buf = self._buffers.get(padded)
        if buf is None:
            # zeros, not empty: CUDA-graph runs use the whole batch, unused rows included
            buf = np.zeros((self.batch_cap(shape), self._k, *padded), np.float32)
            self._buffers[padded] = buf
            while len(self._buffers) > MAX_CACHED_SHAPES:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(padded)
        return buf

    def warm_up(self, *shapes: tuple[int, int], batch_sizes: Sequence[int] | None = None) -> list[tuple]:
        """Run each frame shape (default: ``config.shapes``) once per batch size before real frames.

        Batch sizes (default): on the CPU the shape's batch cap then 1, largest first, so the
        arena is reserved in one piece (measured: a batch size not run before costs no more than
        a known one once the memory is there); with ``fixed_batch`` (GPU default) or a CUDA graph
        the cap only, the one shape that will run; otherwise on CUDA/TensorRT every size from the
        cap down to 1 (cuDNN searches its algorithms, TensorRT picks kernels, per input shape).
        Returns ``[(shape, batch, seconds)]``.
        """
        report = []
        for shape in shapes or self.config.shapes:
            shape = (int(shape[0]), int(shape[1]))
            cap = self.batch_cap(shape)
            if batch_sizes is not None:
                sizes = sorted({min(int(b), cap) for b in batch_sizes if b >= 1}, reverse=True)
            elif self._runner is not None and (self._fixed_batch or self._runner.has_graph(self._run_shape(shape))):
                sizes = [cap]
            elif self.provider in GPU_PROVIDERS:
                sizes = list(range(cap, 0, -1))
            else:
                sizes = sorted({cap, 1}, reverse=True)
            for n in sizes:
                t0 = time.perf_counter()
                result = self.infer([np.zeros(shape, np.float32)] * n, series=[-1] * n)
                dt = time.perf_counter() - t0
                if result.errors:
                    log.warning("warm-up at %dx%d failed: %s", *shape, result.errors[0][2])
                    break
                self.warmed.add(self._run_shape(shape, n))
                report.append((shape, n, dt))
            self._history.reset(-1)
        if report:
            log.info("warm-up: " + ", ".join(f"{h}x{w} batch {n} {dt * 1e3:.0f} ms" for (h, w), n, dt in report))
        return report

    # ------------------------------------------------------------------ inference

    def infer(
        self,
        frames: Sequence[np.ndarray],
        series: Sequence[int] | None = None,
        restart: Sequence[bool] | None = None,
    ) -> InferResult:
        """Denoise ``frames`` (any mix of 2-D shapes and supported dtypes).

        ``series`` (one id per frame) is needed only by multi-frame models, for their history;
        ``restart`` (one flag per frame, default none) starts a frame's series afresh: the frame
        is denoised as the first of a new series. Outputs are in [0, 1]
        (:func:`~livedenoise.engine.to_display`), float32, C-order.
        """
        result = InferResult([None] * len(frames))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape, []).append(i)
        for shape, idx in groups.items():
            cap = self.batch_cap(shape)
            for start in range(0, len(idx), cap):
                self._infer_group(frames, series, shape, idx[start : start + cap], result, restart)
        return result

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.run_shapes[x.shape] += 1
        if self._runner is not None:
            return self._runner.run(x)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return out

    def _infer_group(self, frames, series, shape, idx: list[int], result: InferResult, restart=None) -> None:
        h, w = shape
        hp, wp = self.padded_shape(shape)
        buf = self._buffer(shape)
        n = len(idx)
        k = self._k
        current = buf[:n, k - 1, :h, :w]
        np.stack([frames[i] for i in idx], out=current, casting="unsafe")  # cast once, into the buffer
        normalise(current, self.card.normalisation, out=current)
        # float frames only (integers are always finite): one reduction for the whole group, a
        # non-finite pixel makes its frame's sum non-finite
        if any(frames[i].dtype.kind == "f" for i in idx):
            good = np.isfinite(current.sum(axis=(1, 2), dtype=np.float64))
        else:
            good = None
        if good is not None and not good.all():
            keep = np.flatnonzero(good)
            for j in np.flatnonzero(~good):
                result.errors.append((idx[j], "malformed", "frame has NaN or infinite pixels"))
            if keep.size == 0:
                buf[:n] = 0.0  # no NaN left behind for a padded (CUDA-graph) run
                return
            buf[: keep.size] = buf[keep]
            buf[keep.size : n] = 0.0
            idx = [idx[j] for j in keep]
            n = len(idx)
        if k > 1:
            self._history.fill(buf, idx, series, shape, restart)
        if hp > h:
            buf[:n, :, h:hp, :w] = buf[:n, :, _reflect_index(h, h, hp), :w]
        if wp > w:
            buf[:n, :, :, w:wp] = buf[:n, :, :, _reflect_index(w, w, wp)]
        # a captured CUDA graph has a fixed batch: run the whole buffer, use the first n rows
        padded_run = self._runner is not None and (self._fixed_batch or self._runner.has_graph(buf.shape))
        try:
            out = self._run(buf if padded_run else buf[:n])
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors: wrong shape, a failing op, out of memory
            message = short_error(exc)
            for i in idx:
                result.errors.append((i, "failed", message))
            return
        if out.ndim != 4 or out.shape[0] < n or out.shape[-2:] != (hp, wp):
            for i in idx:
                result.errors.append((i, "failed", f"model output has shape {out.shape}"))
            return
        out = out[:n, 0]
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        out = np.ascontiguousarray(out, dtype=np.float32)
        to_display(out, out=out)
        for j, i in enumerate(idx):
            result.outputs[i] = out[j]

    def run_stack(self, frames: np.ndarray, series: int = 0, first: int = 0, restart: bool = False) -> np.ndarray:
        """A stack of frames ``(T, H, W)`` of one series, in order, ``max_batch`` at a time (the
        series' history carries over from earlier calls; ``restart``: the first frame starts it
        anew): ``(T, H, W)`` float32 in [0, 1]. The first frame that fails raises
        :class:`~livedenoise.errors.LivedenoiseError` naming it (counted from ``first``): a file or
        an array has no frame to skip, unlike a stream. ``denoise`` (CLI and Python) and the
        archive's tasks all run through here."""
        out = np.empty(frames.shape, np.float32)
        for start in range(0, len(frames), self.max_batch):
            chunk = frames[start : start + self.max_batch]
            result = self.infer(list(chunk), [series] * len(chunk), [restart and start == 0] + [False] * (len(chunk) - 1))
            if result.errors:
                i, kind, message = result.errors[0]
                raise LivedenoiseError(f"frame {first + start + i} {kind}: {message}")
            out[start : start + len(chunk)] = result.outputs
        return out

    def reset_series(self, series_id: int) -> None:
        """Forget a series' history now (``infer(..., restart=...)`` does it at the right frame of a batch)."""
        self._history.reset(series_id)

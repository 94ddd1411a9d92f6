"""The inference stage: an onnxruntime session that turns batches of raw frames into denoised ones.

The engine reads the :class:`~livedenoise.modelcard.ModelCard` from the model file, normalises
frames exactly as the trainer did (:func:`~livedenoise.modelcard.normalise`, written straight into
a preallocated input buffer: the only copy of the pixels), pads by reflection to the model's
``size_multiple``, runs the session and crops back. A batch may mix frame shapes: it is grouped by
shape, so any frame size the model accepts works without a restart.

Per frame the Python work is O(1) (one ``normalise`` call into a buffer slice); everything else is
vectorised over the group. Frames with NaN/inf pixels are rejected (``malformed``) with one
reduction over the group, and a group that fails inside onnxruntime is reported (``failed``)
without affecting the other groups.

Multi-frame models (``input_frames = k > 1``, causal): channel ``k - 1`` is the current frame and
channel ``k - 1 - j`` the frame ``j`` frames earlier *in the same series as received by the
engine*; missing history at the start of a series repeats the oldest frame available.

Examples
--------
>>> engine = Engine(model_path)                                   # doctest: +SKIP
>>> result = engine.infer([frame_a, frame_b], series=[1, 1])      # doctest: +SKIP
>>> result.outputs[0].shape == frame_a.shape                      # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import LivedenoiseError, ModelError
from .modelcard import INPUT_NAME, OUTPUT_NAME, ModelCard, normalise, to_display

log = logging.getLogger("livedenoise.engine")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}

MAX_CACHED_SHAPES = 4  # input buffers kept for this many frame shapes (bounded memory)
MAX_SERIES_HISTORY = 8  # series whose previous frames are kept (multi-frame models only)


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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _resolve_provider(requested: str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        name = PROVIDER_ALIASES.get(requested.lower(), requested)
        if name not in available:
            raise LivedenoiseError(
                f"provider {requested!r} is not available in this onnxruntime; available: "
                + ", ".join(available)
            )
        return [name] if name == CPU else [name, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class Engine:
    """An onnxruntime session with the model card's normalisation, padding and batching.

    Parameters
    ----------
    model : path of an ONNX file carrying a ``livedenoise`` model card.
    provider : ``"cpu"``, ``"cuda"``, ``"tensorrt"`` or a full onnxruntime provider name;
        ``None`` picks CUDA where a session really gets it, the CPU otherwise.
    max_batch : the largest batch one session run takes (input buffers are sized for it).
    threads : onnxruntime intra-op threads (0: onnxruntime's default, one per core).
    spin : let onnxruntime's worker threads spin-wait between runs. Off by default: in a live
        pipeline runs come in bursts, and spinning threads steal the cores that receiving and
        publishing need (measured on 2 cores: 1.8x the CPU time, 3x the wall time at 150 fps).

    Raises
    ------
    ModelError : the file is missing, unreadable, not ONNX, or has no valid model card.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        provider: str | None = None,
        max_batch: int = 8,
        threads: int = 0,
        spin: bool = False,
    ):
        import onnxruntime as ort

        self.path = Path(model)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        self.max_batch = max(1, int(max_batch))
        providers = _resolve_provider(provider)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # CUDA may be listed but unusable (no GPU, no CUDA libraries): onnxruntime then falls back
        # to the CPU with a screenful of errors. Silence them while probing; what the session
        # really got is checked (and logged) below.
        probing = provider is None and providers[0] != CPU
        ort.set_default_logger_severity(4 if probing else 3)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for protobuf/IO/graph errors
            raise ModelError(f"cannot load model {self.path}: {_short(exc)}") from None
        finally:
            ort.set_default_logger_severity(3)
        self.provider = self.session.get_providers()[0]
        if provider and self.provider != providers[0]:
            raise LivedenoiseError(
                f"provider {provider!r} requested but the session runs on {self.provider}"
                " (no usable device?)"
            )
        meta = self.session.get_modelmeta()
        self.card = ModelCard.from_metadata(meta.custom_metadata_map, source=str(self.path))
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
        self._history: OrderedDict[int, deque[np.ndarray]] = OrderedDict()
        log.info("model %s (preset %s) on %s", self.path, self.name, self.provider)

    # ------------------------------------------------------------------ helpers

    def padded_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        m = self._mult
        return (-(-shape[0] // m) * m, -(-shape[1] // m) * m)

    def _buffer(self, padded: tuple[int, int]) -> np.ndarray:
        buf = self._buffers.get(padded)
        if buf is None:
            buf = np.empty((self.max_batch, self._k, *padded), np.float32)
            self._buffers[padded] = buf
            while len(self._buffers) > MAX_CACHED_SHAPES:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(padded)
        return buf

    def warm_up(self, shape: tuple[int, int] = (128, 128)) -> None:
        """Run batch sizes 1 and ``max_batch`` once, so the first real frames are not slow."""
        sizes = sorted({1, self.max_batch})
        for n in sizes:
            frames = [np.zeros(shape, np.float32)] * n
            result = self.infer(frames, series=[-1] * n)
            if result.errors:
                log.warning("warm-up at %dx%d failed: %s", *shape, result.errors[0][2])
                break
        self._history.pop(-1, None)

    # ------------------------------------------------------------------ inference

    def infer(self, frames: Sequence[np.ndarray], series: Sequence[int] | None = None) -> InferResult:
        """Denoise ``frames`` (any mix of 2-D shapes and supported dtypes).

        ``series`` (one id per frame) is needed only by multi-frame models, for their history.
        Outputs are in [0, 1] (:func:`~livedenoise.modelcard.to_display`), float32, C-order.
        """
        result = InferResult([None] * len(frames))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape, []).append(i)
        for shape, idx in groups.items():
            for start in range(0, len(idx), self.max_batch):
                self._infer_group(frames, series, shape, idx[start : start + self.max_batch], result)
        return result

    def _infer_group(self, frames, series, shape, idx: list[int], result: InferResult) -> None:
        h, w = shape
        hp, wp = self.padded_shape(shape)
        buf = self._buffer((hp, wp))
        n = len(idx)
        norm = self.card.normalisation
        k = self._k
        for j, i in enumerate(idx):
            normalise(frames[i], norm, out=buf[j, k - 1, :h, :w])
        # float frames only (integers are always finite): one reduction for the whole group, a
        # non-finite pixel makes its frame's sum non-finite
        if any(frames[i].dtype.kind == "f" for i in idx):
            good = np.isfinite(buf[:n, k - 1, :h, :w].sum(axis=(1, 2), dtype=np.float64))
        else:
            good = None
        if good is not None and not good.all():
            keep = np.flatnonzero(good)
            for j in np.flatnonzero(~good):
                result.errors.append((idx[j], "malformed", "frame has NaN or infinite pixels"))
            if keep.size == 0:
                return
            buf[: keep.size] = buf[keep]
            idx = [idx[j] for j in keep]
            n = len(idx)
        if k > 1:
            self._fill_history(buf, idx, series, shape)
        if hp > h:
            buf[:n, :, h:hp, :w] = buf[:n, :, _reflect_index(h, h, hp), :w]
        if wp > w:
            buf[:n, :, :, w:wp] = buf[:n, :, :, _reflect_index(w, w, wp)]
        try:
            (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: buf[:n]})
        except Exception as exc:  # onnxruntime errors: wrong shape, a failing op, out of memory
            message = _short(exc)
            for i in idx:
                result.errors.append((i, "failed", message))
            return
        if out.shape[0] != n or out.ndim != 4 or out.shape[-2:] != (hp, wp):
            for i in idx:
                result.errors.append((i, "failed", f"model output has shape {out.shape}"))
            return
        out = out[:, 0]
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        out = np.ascontiguousarray(out, dtype=np.float32)
        to_display(out, out=out)
        for j, i in enumerate(idx):
            result.outputs[i] = out[j]

    def _fill_history(self, buf: np.ndarray, idx: list[int], series, shape) -> None:
        """Multi-frame models: channels 0..k-2 from each frame's series history (causal)."""
        k = self._k
        h, w = shape
        for j, i in enumerate(idx):
            sid = series[i] if series is not None else 0
            hist = self._history.get(sid)
            if hist is None or (hist and hist[-1].shape != shape):
                hist = deque(maxlen=k - 1)
                self._history[sid] = hist
            self._history.move_to_end(sid)
            while len(self._history) > MAX_SERIES_HISTORY:
                self._history.popitem(last=False)
            current = buf[j, k - 1, :h, :w]
            past = list(hist)
            for c in range(k - 1):
                back = k - 1 - c  # frames before the current one
                src = past[-back] if back <= len(past) else (past[0] if past else current)
                buf[j, c, :h, :w] = src
            hist.append(current.copy())

    def reset_series(self, series_id: int) -> None:
        """Forget a series' history (a new ``start`` for it, or its ``end``)."""
        self._history.pop(series_id, None)

"""What a model file must say about itself, and the one normalisation shared by train and serve.

The trainer writes a :class:`ModelCard` as JSON into the ONNX file's metadata under the key
:data:`METADATA_KEY`; ``serve`` and ``denoise`` read it back and refuse a model without it. The
card carries the input normalisation, so frames are normalised at serve time exactly as they were
at training time: both sides call :func:`normalise` from this module (numpy only).

Tensor contract of the ONNX graph (Ms2c):

* input ``"noisy"``: float32 ``[N, input_frames, H, W]``, normalised with :func:`normalise`; H and
  W multiples of :attr:`ModelCard.size_multiple` (the engine pads by reflection and crops back);
* output ``"clean"``: float32 ``[N, 1, H, W]`` in the generator's tanh range [-1, 1].

:func:`to_display` maps the output to [0, 1] (background 0, atomic peak 1): the range SSIM's
constants C1 = 1e-4 and C2 = 9e-4 assume, so CSS is computed on what is published.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError

METADATA_KEY = "livedenoise"
FORMAT_VERSION = 1
INPUT_NAME = "noisy"
OUTPUT_NAME = "clean"


@dataclass(frozen=True, slots=True)
class Normalisation:
    """``x -> (x - lowpass(x) - offset) * scale`` (low-pass only where ``flatten_sigma`` is set).

    ``offset`` and ``scale`` are fixed from the training frames' statistics, not per frame: a
    per-frame rescale would make a sparse frame's background flicker with the atom count.
    ``flatten_sigma`` (pixels) is the paper's failure case 2 remedy: a wide Gaussian low-pass
    subtracted first, so a background thickness gradient does not become false atoms.
    """

    offset: float
    scale: float
    flatten_sigma: float | None = None


#: How far (relative) a frame's pixel size may be from the training frames' before ``serve`` and
#: ``denoise`` warn: the network learnt atoms of a size in pixels.
PIXEL_SIZE_TOLERANCE = 0.05


def pixel_size_differs(model_nm: float | None, frame_nm: float | None, tolerance: float = PIXEL_SIZE_TOLERANCE) -> bool:
    """Do frames of ``frame_nm`` per pixel differ from the training frames' ``model_nm`` beyond
    ``tolerance``? False where either is unknown.

    >>> pixel_size_differs(0.1, 0.104), pixel_size_differs(0.1, 0.2), pixel_size_differs(None, 0.2)
    (False, True, False)
    """
    return bool(model_nm and frame_nm and abs(frame_nm / model_nm - 1) > tolerance)


@dataclass(frozen=True, slots=True)
class ModelCard:
    preset: str
    normalisation: Normalisation
    input_frames: int = 1
    size_multiple: int = 8
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)
    #: The training frames' pixel size (nm; None when their file did not say): ``serve`` warns
    #: when a stream's ``calibration`` differs, since the model learnt atoms of a size in pixels.
    pixel_size_nm: float | None = None
    #: What the training movie held (``livedenoise.analysis.SampleContent.to_dict()``: density,
    #: width and counts of its atoms, a lattice): ``serve`` and ``denoise`` compare a stream with it
    #: and warn when it does not fit (issue 19). None on cards written before it: no guard.
    expects: dict[str, Any] | None = None
    #: The ground-truth-free score (issue 24: gain over raw in dB, ``livedenoise.analysis.score``)
    #: of this model and of the candidates it was chosen from, on frames held out of training.
    #: None on cards written before it.
    scores: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        size = self.pixel_size_nm
        if size is not None and not (isinstance(size, int | float) and not isinstance(size, bool) and math.isfinite(size) and size > 0):
            raise ModelError(f"model card pixel_size_nm must be a positive number or null, got {size!r:.40}")
        for key in ("expects", "scores"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, dict):
                raise ModelError(f"model card {key} must be an object or null, got {value!r:.40}")

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """The training frames' shape, where the card says (Noise2Atom's ``training.frame_shape``, or
        ``training.movie.frame_shape`` of a model ``train`` chose)."""
        shape = self.training.get("frame_shape") or (self.training.get("movie") or {}).get("frame_shape")
        return (int(shape[0]), int(shape[1])) if isinstance(shape, list | tuple) and len(shape) == 2 else None

    def to_json(self) -> str:
        raw = asdict(self)
        for key in ("pixel_size_nm", "expects", "scores"):
            if raw[key] is None:
                del raw[key]  # a card without it stays readable by versions before the field
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            raw = json.loads(text)
            norm = Normalisation(**raw.pop("normalisation"))
            card = cls(normalisation=norm, **raw)
        except ModelError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"model metadata {METADATA_KEY!r} is not a valid model card: {exc}") from None
        if card.format_version > FORMAT_VERSION:
            raise ModelError(
                f"model card format {card.format_version} is newer than this livedenoise "
                f"understands ({FORMAT_VERSION}); upgrade livedenoise"
            )
        return card

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "model") -> ModelCard:
        """Read the card from an ONNX metadata map (``session.get_modelmeta().custom_metadata_map``)."""
        if METADATA_KEY not in metadata:
            raise ModelError(
                f"{source} has no {METADATA_KEY!r} metadata: export it with `livedenoise train`"
            )
        return cls.from_json(metadata[METADATA_KEY])


def gaussian_lowpass(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of ``(..., H, W)`` frames through the FFT, edges reflected.

    Reflecting by 3 sigma keeps a background gradient from wrapping around the periodic FFT.
    """
    pad = int(np.ceil(3 * sigma))
    h, w = frames.shape[-2:]
    pad_h, pad_w = min(pad, h - 1), min(pad, w - 1)
    widths = [(0, 0)] * (frames.ndim - 2) + [(pad_h, pad_h), (pad_w, pad_w)]
    padded = np.pad(frames.astype(np.float32, copy=False), widths, mode="reflect")
    fy = np.fft.fftfreq(padded.shape[-2])[:, None]
    fx = np.fft.rfftfreq(padded.shape[-1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)
    smooth = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape[-2:])
    return smooth[..., pad_h : pad_h + h, pad_w : pad_w + w].astype(np.float32)


def normalise(frames: np.ndarray, norm: Normalisation, out: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``(..., H, W)`` frames of any supported dtype to float32 network input.

    Vectorised over the batch; with ``out`` given, writes there (no allocation on the hot path).
    """
    if out is None:
        out = np.empty(frames.shape, np.float32)
    np.subtract(frames, np.float32(norm.offset), out=out, dtype=np.float32, casting="unsafe")
    if norm.flatten_sigma:
        out -= gaussian_lowpass(out, norm.flatten_sigma)
    np.multiply(out, np.float32(norm.scale), out=out)
    return out


def causal_windows(frames: np.ndarray, k: int, index: np.ndarray | None = None) -> np.ndarray:
    """The input of a ``k``-frame model for frames ``index`` of a ``(T, H, W)`` movie: ``(N, k, H, W)``.

    Channel ``k - 1`` is the frame itself and channels ``0 .. k - 2`` the frames before it, oldest
    first; before the start of the movie the oldest frame available is repeated. This is the rule
    :class:`livedenoise.engine.Engine` applies to a live series, so training sees what serve feeds.
    """
    idx = np.arange(frames.shape[0]) if index is None else np.asarray(index)
    lags = np.arange(1 - k, 1)
    return frames[np.clip(idx[:, None] + lags[None, :], 0, None)]


def to_display(clean: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Map Ms2c's tanh output [-1, 1] to [0, 1] (background 0, atomic peak 1)."""
    out = np.add(clean, np.float32(1.0), out=out)
    np.multiply(out, np.float32(0.5), out=out)
    return out

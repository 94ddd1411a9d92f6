"""Reading a training checkpoint back for ``--resume``: tensors and plain values only, never code."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from livedenoise.errors import LivedenoiseError

CHECKPOINT_FORMAT = 1  # the "format" of :meth:`trainer.loop.Trainer.checkpoint`; :func:`load_checkpoint` reads only this one


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write ``ckpt`` to ``path`` atomically (a temporary file renamed): a crash mid-write leaves
    the previous checkpoint, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :meth:`Trainer.save`, read with ``weights_only=True``: ``--resume``
    takes a user-supplied file, and full unpickling would run whatever code a crafted file names.
    A checkpoint holds only tensors and plain dicts, lists, strings and numbers, so nothing needs
    allow-listing; anything else is refused with one line."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is refused below, not warned about
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise LivedenoiseError(f"cannot resume from {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler refuses is a user error
        raise LivedenoiseError(f"cannot resume from {path}: not a livedenoise checkpoint ({_refusal(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LivedenoiseError(
            f"cannot resume from {path}: not a livedenoise checkpoint (no format-{CHECKPOINT_FORMAT} dict inside)"
        )
    return ckpt


def _refusal(exc: Exception) -> str:
    """The reason in torch's multi-paragraph refusal, on one line, without its advice to load the
    file with ``weights_only=False``."""
    text = str(exc)
    for marker in ("WeightsUnpickler error:", "trusted source."):
        if marker in text:
            text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
            break
    else:
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split()).rstrip(".") or type(exc).__name__

"""A recording as one standard file (``livedenoise export``): what other tools open.

The crash-safe layout (chunks + index, :mod:`._recorder`) stays the recording format; this writes
a copy of it: the denoised frames and, where recorded, the raw ones, in recording order, with the
pixel size and frame time the detector sent (``calibration``), and each frame's series id, image
id and acquisition time (``start_time``, ns).

* ``.tif``/``.tiff``: an ImageJ hyperstack (``TCYX``: channel 0 raw, 1 denoised; float32, since
  one ImageJ stack has one pixel type), the scale in nm and the frame interval as Fiji reads
  them, one label per plane (``series 1 image 17``) and the ids and times as JSON in ``Info``.
* ``.hspy``, ``.zspy`` (HyperSpy), ``.emd`` (NCEM): one signal, navigation axes frame (and
  channel), image axes y, x in nm; ids and times under ``metadata.livedenoise`` (``.emd``: as
  attributes of the file's ``comments`` group). Needs the ``formats`` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError
from ..io import write_imagej, write_rsciio
from ..protocol import Calibration
from ._read import read_index

EXPORT_SUFFIXES = (".tif", ".tiff", ".hspy", ".zspy", ".emd")


@dataclass(frozen=True, slots=True)
class Exported:
    """What :func:`export_recording` wrote."""

    path: Path
    frames: int
    kinds: tuple[str, ...]
    shape: tuple[int, int]
    calibration: Calibration | None


def export_recording(directory: str | Path, out: str | Path, *, series_id: int | None = None) -> Exported:
    """Write the recording in ``directory`` to ``out`` (format from its extension, see above).

    Frames of every series go in recording order unless ``series_id`` picks one; they must share
    one frame shape. Raises :class:`LivedenoiseError` for an empty recording, an unknown
    extension, or series of different shapes.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise LivedenoiseError(f"{out}: export writes {', '.join(EXPORT_SUFFIXES)}; not {suffix or 'no extension'}")
    entries = [e for e in read_index(directory) if series_id is None or e.series_id == series_id]
    denoised, ids, times, calibration = _gather(entries, "denoised")
    if not denoised:
        which = f"series {series_id}" if series_id is not None else "any series"
        raise LivedenoiseError(f"{directory}: no complete denoised chunk of {which} to export")
    raw_frames, raw_ids, _, _ = _gather(entries, "raw")
    raw_by_id = dict(zip(raw_ids, raw_frames))
    raw = [raw_by_id.get(key) for key in ids] if raw_frames else []
    shapes = {f.shape for f in denoised}
    if len(shapes) > 1:
        series = sorted({s for s, _ in ids})
        raise LivedenoiseError(
            f"{directory}: series {series} have different frame shapes {sorted(shapes)}; export one with --series"
        )
    h, w = denoised[0].shape
    den = np.stack(denoised).astype(np.float32, copy=False)
    kinds: tuple[str, ...] = ("denoised",)
    if raw and all(r is not None and r.shape == (h, w) for r in raw):
        data = np.stack([np.stack(raw).astype(np.float32), den], axis=1)  # (T, C, H, W)
        kinds = ("raw", "denoised")
    else:
        data = den
    info: dict[str, Any] = {
        "channels": list(kinds),
        "series_ids": [s for s, _ in ids],
        "image_ids": [i for _, i in ids],
        "start_times_ns": times,
        "source": str(Path(directory).resolve()),
    }
    cal = calibration or Calibration()
    if suffix in (".tif", ".tiff"):
        labels = [f"series {s} image {i} {k}" for s, i in ids for k in kinds]
        try:
            write_imagej(
                out, data, axes="TCYX" if len(kinds) > 1 else "TYX", pixel_size_nm=cal.pixel_size_nm,
                frame_time_s=cal.frame_time_s, labels=labels, info=json.dumps(info),
            )
        except OSError as exc:
            raise LivedenoiseError(f"cannot write {out}: {exc.strerror or exc}") from None
    else:
        write_rsciio(out, _signal(data, kinds, cal, info, Path(directory).name))
    return Exported(out, len(den), kinds, (h, w), calibration)


def _gather(entries: list, kind: str) -> tuple[list[np.ndarray], list[tuple[int, int]], list[int | None], Calibration | None]:
    import tifffile

    frames: list[np.ndarray] = []
    ids: list[tuple[int, int]] = []
    times: list[int | None] = []
    calibration: Calibration | None = None
    for entry in entries:
        if entry.kind != kind:
            continue
        with tifffile.TiffFile(entry.path) as tif:
            if len(tif.pages) != len(entry.image_ids):
                raise LivedenoiseError(
                    f"{entry.path}: {len(tif.pages)} pages but the index lists {len(entry.image_ids)} frames"
                )
            frames.extend(page.asarray() for page in tif.pages)
        ids.extend((entry.series_id, i) for i in entry.image_ids)
        times.extend(entry.start_times or [None] * len(entry.image_ids))
        if calibration is None:
            calibration = entry.calibration  # the first the detector sent (a change closes chunks)
    return frames, ids, times, calibration


def _signal(data: np.ndarray, kinds: tuple[str, ...], cal: Calibration, info: dict[str, Any], title: str) -> dict[str, Any]:
    t = data.shape[0]
    h, w = data.shape[-2:]
    axes: list[dict[str, Any]] = [
        {"name": "frame", "size": t, "offset": 0.0, "navigate": True,
         "scale": cal.frame_time_s or 1.0, "units": "s" if cal.frame_time_s else ""},
    ]
    if len(kinds) > 1:
        axes.append({"name": "channel", "size": len(kinds), "offset": 0.0, "scale": 1.0, "units": "", "navigate": True})
    for name, size in (("y", h), ("x", w)):
        axes.append({"name": name, "size": size, "offset": 0.0, "navigate": False,
                     "scale": cal.pixel_size_nm or 1.0, "units": "nm" if cal.pixel_size_nm else ""})
    return {
        "data": data,
        "axes": axes,
        "metadata": {
            "General": {"title": f"livedenoise recording {title}"},
            "Signal": {"signal_type": ""},
            "livedenoise": info,
        },
        "original_metadata": {"comments": {"livedenoise": json.dumps(info)}},  # what NCEM .emd keeps
    }

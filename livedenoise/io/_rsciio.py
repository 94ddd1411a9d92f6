"""Every image format RosettaSciIO reads (``formats`` extra; RosettaSciIO is GPL-3.0, so it is
optional and imported only here, only when such a file is opened).

RosettaSciIO returns a list of signals, each a dict of ``data`` (a dask array with
``lazy=True``), ``axes`` (name, size, scale, units, ``navigate``), ``metadata`` and
``original_metadata`` (the vendor's own tags). This module picks the image series among them,
finds its frame axis and reads the calibration; what each vendor calls things is confined here.
"""

from __future__ import annotations

import gc
import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError, short_error
from ._units import is_time_unit, length_nm, time_s

log = logging.getLogger("livedenoise.io")

EXTRA_HINT = 'pip install "livedenoise[formats]"'

#: Extensions read through RosettaSciIO (lower case), with the plugin where several claim one.
#: The list is what the error for a missing extra can name; any other extension RosettaSciIO
#: reads is tried too once it is installed.
KNOWN: dict[str, str | None] = {
    ".emd": "rsciio.emd", ".dm3": "rsciio.digitalmicrograph", ".dm4": "rsciio.digitalmicrograph",
    ".ser": "rsciio.tia", ".emi": "rsciio.tia", ".mrc": "rsciio.mrc", ".ali": "rsciio.mrc",
    ".mrcz": "rsciio.mrcz", ".hspy": "rsciio.hspy", ".hdf5": "rsciio.hspy", ".zspy": "rsciio.zspy",
    ".blo": "rsciio.blockfile", ".tvips": "rsciio.tvips", ".mib": "rsciio.quantumdetector",
    ".prz": "rsciio.pantarhei", ".unf": "rsciio.semper", ".rpl": "rsciio.ripple", ".de5": "rsciio.emd",
}
_READ_OPTIONS: dict[str, dict[str, Any]] = {
    # Velox: images only (not EDS spectra), and an SI's HAADF frames as a stack, not summed
    "rsciio.emd": {"select_type": "images", "load_SI_image_stack": True},
}


def plugin_for(suffix: str) -> str | None:
    """The RosettaSciIO module that reads ``suffix`` files; None if none does. Raises the
    missing-extra error for a known extension when RosettaSciIO is not installed."""
    suffix = suffix.lower()
    try:
        import rsciio
    except ImportError:
        if suffix in KNOWN:
            raise LivedenoiseError(f"{suffix} files need RosettaSciIO: {EXTRA_HINT}") from None
        return None
    if KNOWN.get(suffix):
        return KNOWN[suffix]
    for plugin in rsciio.IO_PLUGINS:
        if suffix[1:] in {e.lower() for e in plugin["file_extensions"]}:
            return plugin["api"]
    return None


def read_rsciio(path: Path, module: str, signal: str | None, what: str) -> tuple[Any, dict[str, Any]]:
    """``(data, fields)`` of the image series in ``path`` (lazy where the plugin allows)."""
    try:
        reader = importlib.import_module(module).file_reader
    except ImportError as exc:
        raise LivedenoiseError(f"{path.suffix} files need {exc.name or 'a missing package'}: {EXTRA_HINT}") from None
    failure: str | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            signals = reader(str(path), lazy=True, **_READ_OPTIONS.get(module, {}))
        except ImportError as exc:  # a plugin's own optional dependency (sparse, zarr, mrcz ...)
            failure = f"cannot read {what} {path}: it needs {exc.name or exc}: {EXTRA_HINT}"
        except Exception as exc:  # noqa: BLE001 - each plugin raises its own types: all mean "not readable"
            failure = f"cannot read {what} {path} as {module.rsplit('.', 1)[-1]}: {short_error(exc)}"
        if failure is not None:
            gc.collect()  # a plugin that failed half-way may leave its file open: close it now, quietly
    if failure is not None:
        raise LivedenoiseError(failure)
    for w in caught:
        log.debug("%s: %s", path.name, w.message)
    if not signals:
        raise LivedenoiseError(f"{what} {path}: no signal in it")
    chosen, names = _pick(path, signals, signal, what)
    return _image_series(path, chosen, what, names)


def _title(sig: dict[str, Any], index: int) -> str:
    title = ((sig.get("metadata") or {}).get("General") or {}).get("title")
    return str(title) if title else f"signal {index}"


def _signal_axes(sig: dict[str, Any]) -> list[dict[str, Any]]:
    axes = sig.get("axes") or []
    navigating = [a for a in axes if a.get("navigate") is True]
    if navigating:
        return [a for a in axes if a.get("navigate") is not True]
    return axes[-2:]  # no axis navigates (NCEM .emd, MRC): the last two are the image (row-major readers)


def _is_image(sig: dict[str, Any]) -> bool:
    data = sig["data"]
    return len(_signal_axes(sig)) == 2 and data.ndim >= 2 and data.dtype.names is None


def _pick(path: Path, signals: list[dict[str, Any]], wanted: str | None, what: str) -> tuple[dict[str, Any], list[str]]:
    names = [_title(s, i) for i, s in enumerate(signals)]
    if wanted is not None:
        hits = [i for i, n in enumerate(names) if n.lower() == wanted.lower()]
        if not hits and wanted.isdigit() and int(wanted) < len(signals):
            hits = [int(wanted)]
        if not hits:
            raise LivedenoiseError(f"{what} {path}: no signal named {wanted!r}; it has {', '.join(names)}")
        return signals[hits[0]], names
    images = [i for i, s in enumerate(signals) if _is_image(s)]
    if not images:
        sig = signals[0]
        dims = len(_signal_axes(sig))
        if sig["data"].dtype.names is not None:
            raise LivedenoiseError(f"{what} {path} holds colour (RGB) images; need grey frames")
        kind = "a 1-D signal (a spectrum or profile)" if dims == 1 else f"{dims}-D signals"
        raise LivedenoiseError(f"{what} {path} holds {kind}, no image signal ({', '.join(names)})")
    # several image signals (HAADF, BF, DF ... of one scan): the longest series, HAADF first on a tie
    best = max(images, key=lambda i: (_frames(signals[i]), "haadf" in names[i].lower(), -i))
    if len(images) > 1:
        log.info("%s: reading %r of the image signals %s (--signal to choose)", path.name, names[best],
                 ", ".join(names[i] for i in images))
    return signals[best], names


def _frames(sig: dict[str, Any]) -> int:
    return int(np.prod(sig["data"].shape)) // max(1, int(np.prod(sig["data"].shape[-2:])))


def _image_series(path: Path, sig: dict[str, Any], what: str, names: list[str]) -> tuple[Any, dict[str, Any]]:
    data = sig["data"]
    if data.dtype.names is not None:
        raise LivedenoiseError(f"{what} {path} holds colour (RGB) images; need grey frames")
    axes = list(sig.get("axes") or [])
    image_axes = _signal_axes(sig)
    if len(image_axes) != 2:
        dims = len(image_axes)
        kind = "a 1-D signal (a spectrum or profile)" if dims == 1 else f"{dims}-D signals"
        raise LivedenoiseError(f"{what} {path}: the chosen signal holds {kind}, not images")
    if len(axes) != data.ndim:  # a reader that lists no axes: take the array as it is
        axes = [{} for _ in range(data.ndim - 2)] + image_axes
    order = [int(a["index_in_array"]) if a.get("index_in_array") is not None else i for i, a in enumerate(axes)]
    image_ids = {id(a) for a in image_axes}
    image_idx = [i for i, a in enumerate(axes) if id(a) in image_ids]
    frame_axes = [i for i, a in enumerate(axes) if id(a) not in image_ids]
    title = ((sig.get("metadata") or {}).get("General") or {}).get("title")
    fields: dict[str, Any] = {"signal": str(title) if title else None, "signals": tuple(names)}
    frame_axis = None
    if frame_axes:
        longer = [i for i in frame_axes if int(data.shape[order[i]]) > 1]
        if len(longer) > 1:
            sizes = " x ".join(str(data.shape[order[i]]) for i in frame_axes)
            raise LivedenoiseError(
                f"{what} {path}: a {sizes} grid of images (a scan of diffraction patterns?), not a movie; "
                "give a file with one series of frames"
            )
        frame_axis = longer[0] if longer else frame_axes[0]
        keep = [order[i] for i in (frame_axis, *image_idx)]
        squeeze = tuple(order[i] for i in frame_axes if i != frame_axis)
        if squeeze:
            data = data.squeeze(axis=squeeze)
            keep = [k - sum(1 for s in squeeze if s < k) for k in keep]
        if keep != [0, 1, 2]:
            data = data.transpose(keep)
    x = image_axes[-1]
    fields["pixel_size_nm"] = length_nm(x.get("scale"), x.get("units"))
    if frame_axis is not None:
        t = axes[frame_axis]
        if is_time_unit(t.get("units")):
            fields["frame_time_s"] = time_s(t.get("scale"), t.get("units"))
    fields.update({k: v for k, v in _vendor_times(sig.get("original_metadata") or {}, data).items()
                   if v is not None and fields.get(k) is None})
    return data, fields


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _vendor_times(om: dict[str, Any], data: Any) -> dict[str, Any]:
    """Frame time (s) and per-frame times (s since the epoch) where the vendor tags state them."""
    out: dict[str, Any] = {}
    # Velox (.emd): Scan.FrameTime, s
    out["frame_time_s"] = time_s(_get(om, "Scan", "FrameTime"), "s")
    # TIA (.ser/.emi): AcquireInfo.FrameTime, s; one Time (s since the epoch) per valid frame
    if out["frame_time_s"] is None:
        out["frame_time_s"] = time_s(_get(om, "ObjectInfo", "AcquireInfo", "FrameTime"), "s")
    stamps = _get(om, "ser_header_parameters", "Time")
    if stamps is not None and data.ndim == 3 and np.ndim(stamps) == 1 and len(stamps) == data.shape[0]:
        out["times_s"] = np.asarray(stamps, dtype=np.float64)
    # DigitalMicrograph (.dm3/.dm4): DigiScan's Sample Time (pixel dwell, µs) x pixels, or a camera's exposure
    if out["frame_time_s"] is None:
        for group in (_get(om, "ImageList") or {}).values():
            tags = _get(group, "ImageTags")
            dwell = _get(tags, "DigiScan", "Sample Time")
            if dwell is not None:
                out["frame_time_s"] = time_s(float(dwell) * data.shape[-1] * data.shape[-2], "µs")
                break
            exposure = _get(tags, "Acquisition", "Parameters", "High Level", "Exposure (s)")
            if exposure is not None:
                out["frame_time_s"] = time_s(exposure, "s")
                break
    return out


def write_rsciio(path: str | Path, signal: dict[str, Any]) -> None:
    """Write one signal dict (``data``, ``axes``, ``metadata``, ``original_metadata``) with
    RosettaSciIO's writer for ``path``'s extension: ``.hspy`` (HDF5), ``.zspy`` (zarr) or ``.emd``
    (NCEM, which keeps no metadata tree: only ``original_metadata["comments"]`` and the like, as
    attributes)."""
    path = Path(path)
    suffix = path.suffix.lower()
    module = {".hspy": "rsciio.hspy", ".zspy": "rsciio.zspy", ".emd": "rsciio.emd"}.get(suffix)
    if module is None:
        raise LivedenoiseError(f"{path}: RosettaSciIO output is .hspy, .zspy or .emd, not {suffix or 'no extension'}")
    try:
        writer = importlib.import_module(module).file_writer
    except ImportError as exc:
        raise LivedenoiseError(f"writing {suffix} needs {exc.name or 'RosettaSciIO'}: {EXTRA_HINT}") from None
    full = {
        "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {},
        "models": {}, "package_info": {"name": "livedenoise"}, **signal,
    }
    kwargs: dict[str, Any] = {} if suffix == ".emd" else {"show_progressbar": False}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            writer(str(path), full, **kwargs)
        except Exception as exc:  # noqa: BLE001 - h5py/zarr raise many types: all mean "not written"
            raise LivedenoiseError(f"cannot write {path}: {short_error(exc)}") from None

"""TIFF in and out with the calibration microscopists' tools read: ImageJ's (what Fiji opens)
and OME's. tifffile only: no new dependency."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._units import length_nm, time_s


def read_tiff(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(array, calibration fields)`` of the first series (OME and ImageJ stacks read as one).

    The fields are those of :class:`~livedenoise.io.Movie` that the file states: ``pixel_size_nm``
    from ImageJ's ``unit`` and XResolution or OME's ``PhysicalSizeX``; ``frame_time_s`` from
    ImageJ's ``finterval`` or OME's ``TimeIncrement``. A plain TIFF's resolution (dots per inch)
    is not a pixel size and is ignored.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        arr = series.asarray()
        fields: dict[str, Any] = {"axes": axes}
        if tif.is_ome and tif.ome_metadata:
            fields.update(_ome_calibration(tif.ome_metadata))
        elif tif.is_imagej and tif.imagej_metadata is not None:
            fields.update(_imagej_calibration(tif.imagej_metadata, tif.pages.first))
    return arr, fields


def _imagej_calibration(meta: dict[str, Any], page: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unit = meta.get("unit")
    if isinstance(unit, str):
        unit = unit.replace("\\u00B5", "µ").replace("\\u00c5", "Å").replace("\\u00C5", "Å")
    tag = page.tags.get("XResolution")
    if tag is not None and unit:
        num, den = tag.value
        if num > 0 and den > 0:
            out["pixel_size_nm"] = length_nm(den / num, unit)
    if "finterval" in meta:
        out["frame_time_s"] = time_s(meta["finterval"], "s")
    return {k: v for k, v in out.items() if v is not None}


def _ome_calibration(xml: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return out
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return out
    size = length_nm(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
    step = time_s(pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s"))
    if size is not None:
        out["pixel_size_nm"] = size
    if step is not None:
        out["frame_time_s"] = step
    return out


def write_imagej(
    path: str | Path,
    data: np.ndarray,
    *,
    axes: str = "TYX",
    pixel_size_nm: float | None = None,
    frame_time_s: float | None = None,
    labels: Sequence[str] | None = None,
    info: str | None = None,
) -> None:
    """An ImageJ hyperstack Fiji opens with the right scale (``Image > Properties``): the pixel
    size as XResolution/YResolution in pixels per nm with ``unit=nm``, the frame interval as
    ``finterval``, one label per plane (``labels``) and free text (``info``, Fiji's
    ``Image > Show Info``). ``data`` must be a dtype ImageJ takes (uint8, uint16, float32).

    >>> import tempfile, tifffile
    >>> f = Path(tempfile.mkdtemp()) / "m.tif"
    >>> write_imagej(f, np.zeros((2, 4, 4), "f4"), pixel_size_nm=0.0384, frame_time_s=0.25)
    >>> arr, fields = read_tiff(f); round(fields["pixel_size_nm"], 6), fields["frame_time_s"]
    (0.0384, 0.25)
    """
    import tifffile

    metadata, kwargs = imagej_metadata(pixel_size_nm, frame_time_s, info, axes=axes, labels=labels)
    tifffile.imwrite(path, data, imagej=True, metadata=metadata, **kwargs)


def imagej_metadata(
    pixel_size_nm: float | None,
    frame_time_s: float | None,
    info: str | None = None,
    *,
    axes: str = "TYX",
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, keywords)`` for ``tifffile.imwrite(..., imagej=True)`` (:func:`write_imagej`'s
    calibration, for writers that make the file themselves, such as the archive's)."""
    metadata: dict[str, Any] = {"axes": axes}
    kwargs: dict[str, Any] = {}
    if pixel_size_nm is not None:
        metadata["unit"] = "nm"
        kwargs["resolution"] = (1.0 / pixel_size_nm, 1.0 / pixel_size_nm)
    if frame_time_s is not None:
        metadata["finterval"] = float(frame_time_s)
    if labels is not None:
        metadata["Labels"] = list(labels)
    if info is not None:
        metadata["Info"] = info
    return metadata, kwargs

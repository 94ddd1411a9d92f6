"""Nion Swift's own files, which RosettaSciIO does not read: ``.ndata`` (a zip of ``data.npy``
and ``metadata.json``) and ``.h5`` (a ``data`` dataset whose ``properties`` attribute is the
same JSON). Written from the format as Nion Swift stores it; no Nion code is used.

The properties say which axes are what: ``is_sequence`` (the first axis is time: a movie),
``collection_dimension_count`` (scan positions, as in 4D-STEM), ``datum_dimension_count`` (2 for
an image); ``dimensional_calibrations`` gives each axis' ``scale`` and ``units``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LivedenoiseError
from ._units import length_nm, time_s


def read_ndata(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(array, fields)``: ``data.npy`` memory-mapped where the zip stores it uncompressed."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "data.npy" not in names or "metadata.json" not in names:
            raise LivedenoiseError(f"{path} is a zip but not a Nion .ndata file (no data.npy and metadata.json)")
        properties = json.loads(zf.read("metadata.json"))
        info = zf.getinfo("data.npy")
        data = _mmap_member(path, info) if info.compress_type == zipfile.ZIP_STORED else None
        if data is None:
            with zf.open(info) as fh:
                data = np.load(fh, allow_pickle=False)
    return data, _fields(path, data, properties)


def _mmap_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` zip member: its local header says where the bytes start."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise LivedenoiseError(f"{path}: damaged zip (bad local header of data.npy)")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            return None  # a newer .npy header: read it whole instead
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise LivedenoiseError(f"{path}: data.npy holds Python objects; refusing to unpickle")
    if offset + dtype.itemsize * int(np.prod(shape)) > start + info.file_size:
        raise LivedenoiseError(f"{path}: data.npy is shorter than its header says (truncated file?)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_nion_h5(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(dataset, fields)``; the h5py dataset stays open and is read frame by frame as used."""
    try:
        import h5py
    except ImportError:
        raise LivedenoiseError(f'reading {path} (HDF5) needs h5py: pip install "livedenoise[formats]"') from None
    f = h5py.File(path, "r")
    try:
        data = f.get("data")
        raw = data.attrs.get("properties") if isinstance(data, h5py.Dataset) else None
        if raw is None:
            raise LivedenoiseError(
                f"{path} is HDF5 but not a Nion Swift file (no 'data' dataset with 'properties'); "
                "HyperSpy files end in .hspy"
            )
        properties = json.loads(raw)
    except BaseException:
        f.close()
        raise
    return data, _fields(path, data, properties)


def _fields(path: Path, data: Any, properties: dict[str, Any]) -> dict[str, Any]:
    ndim = len(data.shape)
    datum = int(properties.get("datum_dimension_count", min(ndim, 2)))
    collection = int(properties.get("collection_dimension_count", 0))
    sequence = bool(properties.get("is_sequence", False))
    if datum == 1:
        raise LivedenoiseError(f"{path} holds a 1-D signal (a spectrum or profile), not images")
    if datum != 2:
        raise LivedenoiseError(f"{path}: {datum}-D data items are not images")
    if collection and int(np.prod(data.shape[int(sequence) : int(sequence) + collection])) > 1:
        raise LivedenoiseError(
            f"{path} is a {collection}-D scan of {datum}-D data (4D-STEM?), not a movie of images"
        )
    calibrations = properties.get("dimensional_calibrations") or []
    fields: dict[str, Any] = {"frame_axis": 0 if sequence else None, "nion_collection": collection}
    title = properties.get("title")
    if isinstance(title, str) and title:
        fields["signal"] = title
    if len(calibrations) == ndim:
        x = calibrations[-1] or {}
        fields["pixel_size_nm"] = length_nm(x.get("scale"), x.get("units"))
        if sequence:
            t = calibrations[0] or {}
            fields["frame_time_s"] = time_s(t.get("scale"), t.get("units"))
    if fields.get("frame_time_s") is None:
        fields["frame_time_s"] = _frame_time(properties.get("metadata") or {}, data.shape[-2:])
    return fields


def _frame_time(metadata: dict[str, Any], shape: tuple[int, int]) -> float | None:
    """A camera's exposure, or a scan's pixel time times its pixels (no flyback: a lower bound)."""
    hardware = metadata.get("hardware_source") or {}
    scan = (metadata.get("scan") or {}).get("scan_device_parameters") or {}
    exposure = hardware.get("exposure")
    if exposure is not None:
        return time_s(exposure, "s")
    pixel_us = scan.get("pixel_time_us", hardware.get("pixel_time_us"))
    if pixel_us is not None:
        return time_s(float(pixel_us) * shape[0] * shape[1], "µs")
    return None

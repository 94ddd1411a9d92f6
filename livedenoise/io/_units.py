"""Units as the vendors spell them, converted to the two the project keeps: nanometres and seconds."""

from __future__ import annotations

import math

# lower-cased spellings seen in TIA, Velox, DM, Nion, ImageJ and OME files
_LENGTH_NM: dict[str, float] = {
    "m": 1e9, "meter": 1e9, "metre": 1e9, "meters": 1e9, "metres": 1e9,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "å": 0.1, "Å": 0.1, "a": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
}
_TIME_S: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ns": 1e-9, "nanosecond": 1e-9, "nanoseconds": 1e-9,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
}


def _factor(table: dict[str, float], unit: object) -> float | None:
    if not isinstance(unit, str):
        return None
    text = unit.strip()
    return table.get(text, table.get(text.lower()))


def length_nm(value: object, unit: object) -> float | None:
    """``value`` ``unit`` in nanometres; None when the unit is not a length or the value not a
    positive finite number (an uncalibrated axis: scale 1, no unit).

    >>> length_nm(0.0053024148, "µm"), length_nm(1.0, ""), length_nm(0.75, "Å")
    (5.3024148, None, 0.075)
    """
    factor = _factor(_LENGTH_NM, unit)
    return _positive(value, factor)


def time_s(value: object, unit: object) -> float | None:
    """``value`` ``unit`` in seconds; None when the unit is not a time.

    >>> time_s(235.93, "ms"), time_s(3, "px")
    (0.23593, None)
    """
    return _positive(value, _factor(_TIME_S, unit))


def is_time_unit(unit: object) -> bool:
    return _factor(_TIME_S, unit) is not None


def _positive(value: object, factor: float | None) -> float | None:
    if factor is None:
        return None
    try:
        number = float(value) * factor  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return float(f"{number:.12g}") if math.isfinite(number) and number > 0 else None

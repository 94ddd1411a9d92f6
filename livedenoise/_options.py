"""One description per configuration field, written where the field is declared.

Configuration classes are plain dataclasses (a serve-only install needs nothing more); a field
declared with :func:`option` carries its help text in ``metadata["help"]``, and the CLI reads it
back with :func:`help_for` (and its default with :func:`default_for`), so the code, ``--help`` and the docs say the same thing once.
Sizes given as text (``HEIGHTxWIDTH``) are read by :func:`parse_shapes`, for the CLI and the
configs that build themselves from its values.

>>> from dataclasses import dataclass
>>> @dataclass
... class C:
...     rate: float = option(150.0, "Frames per second.")
>>> help_for(C, "rate"), default_for(C, "rate")
('Frames per second.', 150.0)
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any

from .errors import LivedenoiseError


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A dataclass field with its one description (``factory`` for mutable defaults)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def help_for(cls: type, name: str) -> str:
    """The description of field ``name`` of dataclass ``cls``."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def default_for(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (a fresh one for a factory field), so a
    command-line option defaults to what the configuration does without repeating it."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``--warmup-size``, ``--scan``: ``"128x128,512x512"`` as ``((128, 128), (512, 512))``; ``""``: none."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise LivedenoiseError(f"frame size {item!r}: expected HEIGHTxWIDTH, like 128x128") from None
        shapes.append((h, w))
    return tuple(shapes)

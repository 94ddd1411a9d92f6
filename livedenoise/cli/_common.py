"""What the command modules share: logging, ``--model`` (a file or a shipped model's name), and
options read from the configuration classes.

An option that sets a configuration field is declared with :func:`config_option`, which takes the
field's default and help from the dataclass (:mod:`livedenoise._options`): the code, ``--help``
and the docs then say one thing, declared once. Such options use typer's "default is an Option"
form, because ``Annotated`` cannot carry a default.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from .._options import default_for, help_for
from ..daemon import ServeConfig

log = logging.getLogger("livedenoise")

SHIPPED_MODELS = (
    "default (1 frame; used without --model), rt (1 frame, ~2x faster on a CPU), temporal (3 frames), "
    "lowdose (5 frames, ~100 e-/px), hops (lowdose behind a motion-aware window: follows hopping atoms) - "
    "Noise2Atom, for sparse atoms; general (self-supervised, 8 frames, any sample: the demo's), "
    "filter (a causal mean of 5 frames and a 1 px Gaussian)"
)
_FROM_CONFIG: Any = object()


def config_option(
    cls: type, field: str, *param_decls: str, panel: str | None = None, default: Any = _FROM_CONFIG, **kwargs: Any
) -> Any:
    """A typer option for dataclass field ``cls.field``: its help, and its default unless ``default`` is given.

    ``param_decls`` name the option where its name differs from the function parameter's
    (``--queue`` for ``QueueConfig.capacity``); ``panel`` groups it in ``--help``.
    """
    value = default_for(cls, field) if default is _FROM_CONFIG else default
    return typer.Option(value, *param_decls, help=help_for(cls, field), rich_help_panel=panel, **kwargs)


def model_option(panel: str | None = None, default_note: str = "") -> Any:
    """``--model/-m``: ServeConfig.model's help, plus the shipped models' names (see :func:`model_path`)."""
    return typer.Option(
        None, "--model", "-m", rich_help_panel=panel,
        help=f"{help_for(ServeConfig, 'model')} Or the name of a shipped one: {SHIPPED_MODELS}.{default_note}",
    )


def model_path(model: Path | None) -> Path:
    """``--model``: a file, or the name of a shipped model (:data:`SHIPPED_MODELS`), or none."""
    from ..engine import resolve_model

    return resolve_model(model)


def setup_logging(level: str = "INFO") -> None:
    """Log lines on stderr (stdout stays for results and status lines)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

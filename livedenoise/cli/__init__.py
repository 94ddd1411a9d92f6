"""The ``livedenoise`` command line.

Each group of commands lives in ``livedenoise/commands/`` next to the stage it drives and is
registered here. Commands import torch or Qt only inside their bodies, so ``serve`` never loads them.
A :class:`~livedenoise.errors.LivedenoiseError` becomes one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from ..errors import LivedenoiseError
from . import _evaluate as evaluate
from . import _pipeline as pipeline
from . import _train as train
from . import _view as view

app = typer.Typer(
    name="livedenoise",
    help="Live Noise2Atom denoising for STEM: replay, serve, view, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (pipeline, train, view, evaluate):
    module.register(app)


def main() -> None:
    try:
        app()
    except LivedenoiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

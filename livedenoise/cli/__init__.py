"""The ``livedenoise`` command line.

Each module holds one group of commands on its own :class:`typer.Typer` (module-level functions),
merged here into one app: ``_serve`` (serve, demo), ``_replay``, ``_view``, ``_keys``, ``_files``
(denoise, css, inspect), ``_export`` (export), ``_train``, ``_sweep`` (train-sweep), ``_evaluate`` (evaluate, simulate). Commands import torch or
Qt only inside their bodies, so ``--help`` and ``serve`` never load them. A
:class:`~livedenoise.errors.LivedenoiseError` becomes one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from ..errors import LivedenoiseError
from . import _evaluate, _export, _files, _keys, _replay, _serve, _sweep, _train, _view

app = typer.Typer(
    name="livedenoise",
    help="Live Noise2Atom denoising for STEM: replay, serve, view, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _group in (_serve, _replay, _view, _keys, _files, _export, _train, _sweep, _evaluate):
    app.add_typer(_group.app)


def main() -> None:
    """The console script: run the app; a LivedenoiseError is one ``error:`` line and exit code 2."""
    try:
        app()
    except LivedenoiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["app", "main"]

"""``keys``: a CURVE key pair for encrypted, authenticated streams (:mod:`livedenoise.security`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("keys", rich_help_panel="Live")
def keys_command(
    name: Annotated[Path, typer.Argument(help="Writes NAME.key (public, to hand out) and NAME.key_secret.")],
) -> None:
    """Make a CURVE key pair for encrypted, authenticated streams (--curve-secret, --curve-allow)."""
    from ..security import make_keys

    public, secret = make_keys(name)
    typer.echo(f"public key: {public} (give to peers / --curve-allow)\nsecret key: {secret} (keep private)")

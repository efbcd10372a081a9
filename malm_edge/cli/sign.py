"""`malm-edge keygen` and `malm-edge sign BUNDLE --key KEY`: Ed25519 signatures of bundle manifests.

Only typer and the standard library are imported here; edge/signing.py (and `cryptography`, the
`sign` extra) load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from malm_edge.cli._errors import run_or_exit


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (PEM); the public key goes "
                                                    "beside it as <name>.pub.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing key files.")] = False,
) -> None:
    """Make an Ed25519 key pair for signing bundles (keep the private key off the phones)."""
    from malm_edge.edge.signing import generate_keypair

    public = out.with_name(out.name + ".pub")
    key_id = run_or_exit(lambda: generate_keypair(out, public, overwrite=overwrite))
    typer.echo(f"private key: {out} (keep it secret)\npublic key:  {public} (give it to readers: "
               f"--require-signature {public})\nkey id: {key_id}")


def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (manifest.json).")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) from `malm-edge keygen`.")],
) -> None:
    """Check a bundle (checksums, every file covered) and sign its manifest (writes manifest.sig)."""
    from malm_edge.edge.signing import sign_bundle

    typer.echo(f"signed: {run_or_exit(lambda: sign_bundle(bundle, key))}")

"""`malm-edge search PHOTO... --bundle B`: top-k recipes for photos, from a bundle alone (edge/).

Only typer and the standard library are imported here; edge/ loads inside the command.

Several photos: every readable photo is searched; each unreadable one is reported on stderr as
`error: <photo>: <why>` and, with --json, appears in the list as {"photo", "bundle", "backend",
"error", "results": []} so the list stays aligned with the arguments. The exit code is 1 if any
photo failed (0 otherwise). A single unreadable photo prints only the error and exits 1.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


class BackendChoice(str, Enum):
    executorch = "executorch"
    onnx = "onnx"
    coreml = "coreml"


def search_photos(photos: list[Path], bundle: Path, top_k: int = 5, backend: str | None = None,
                  threads: int | None = None, require_signature: Path | None = None) -> list[dict[str, Any]]:
    """Search each photo; one dict per photo, in order.

    Returns:
        [{"photo", "bundle", "backend", "encoder", "results": [{"rank", "id", "title", "score"}]}]
        with "error" (and empty results) for a photo that could not be read.

    Raises:
        BundleError, BackendError: the bundle or the runtime is unusable (nothing is searched).
    """
    from malm_edge.edge.preprocess import ImageError
    from malm_edge.edge.retriever import Retriever

    outputs = []
    with Retriever(bundle, backend=backend, threads=threads, require_signature=require_signature) as retriever:
        header = {"bundle": str(bundle), "backend": retriever.backend.name,
                  "encoder": retriever.backend.encoder}
        for photo in photos:
            try:
                hits = retriever.search(photo, top_k)
            except ImageError as err:
                outputs.append({"photo": str(photo), **header, "error": str(err), "results": []})
                continue
            results = [{key: hit[key] for key in ("rank", "id", "title", "score")} for hit in hits]
            outputs.append({"photo": str(photo), **header, "results": results})
    return outputs


def _print_text(outputs: list[dict[str, Any]]) -> None:
    for output in outputs:
        if "error" in output:
            continue
        typer.echo(f"{output['photo']}  ({output['backend']}: {output['encoder']})")
        for hit in output["results"]:
            typer.echo(f"  {hit['rank']:>2}. {hit['score']:.4f}  {hit['title']}  [{hit['id']}]")


def search(
    photos: Annotated[list[Path], typer.Argument(help="Photo files (JPEG, PNG, GIF, ...).")],
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder (manifest.json).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Recipes per photo.")] = 5,
    backend: Annotated[
        Optional[BackendChoice],
        typer.Option(help="Encoder runtime (default: coreml on macOS, else onnx, else executorch)."),
    ] = None,
    encoder: Annotated[
        Optional[str], typer.Option(help="Encoder name from the manifest (overrides --backend).")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Encoder threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list when several photos).")] = False,
    require_signature: Annotated[Optional[Path], typer.Option(
        "--require-signature", metavar="PUBKEY", help="Refuse the bundle unless signed by this Ed25519 key (PEM).")
    ] = None,
) -> None:
    """Rank the bundle's recipes for each photo (preprocess, encode, int8 table top-k, catalog)."""
    from malm_edge.converters.executorch_runtime import register_executorch_backend
    from malm_edge.edge.backends import BackendError
    from malm_edge.edge.bundle import BundleError

    register_executorch_backend()
    preferred = encoder or (backend.value if backend else None)
    try:
        outputs = search_photos(photos, bundle, top_k, preferred, threads, require_signature)
    except (BundleError, BackendError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    failed = [output for output in outputs if "error" in output]
    for output in failed:
        typer.echo(f"error: {output['error']}", err=True)
    if as_json:
        good = outputs if len(outputs) > 1 else [o for o in outputs if "error" not in o]
        if good:
            typer.echo(json.dumps(good[0] if len(photos) == 1 else good, indent=2))
    else:
        _print_text(outputs)
    if failed:
        raise typer.Exit(1)

"""`malm-edge demo --bundle B`: serve the offline web app (mobile_demo/) with a bundle, for a phone.

Only typer and the standard library are imported here; the server (edge/demo_server.py) loads
inside the command. The app needs no node at run time: its runtime (onnxruntime-web,
sqlite-wasm) is vendored in mobile_demo/app/vendor/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SECURE_CONTEXT_NOTE = """\
Phones: the camera works anywhere, but the service worker (offline use), threads and checksums
need a secure context: https://, or http://localhost. Over plain http://<LAN IP> the page still
searches, online only and single-threaded. For the full app on a phone, either
  - serve HTTPS with a self-signed certificate and accept it once on the phone:
      openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout key.pem -out cert.pem -subj /CN={ip} \\
        -addext subjectAltName=IP:{ip}
      malm-edge demo --bundle {bundle} --host 0.0.0.0 --cert cert.pem --key key.pem
  - or (Android Chrome) open chrome://flags/#unsafely-treat-insecure-origin-as-secure, add {origin}
    and relaunch;
  - or forward the port over USB: `adb reverse tcp:{port} tcp:{port}`, then open
    http://localhost:{port}/ on the phone."""


def _announce(url: str, host: str, port: int, scheme: str, bundle: Path) -> None:
    from malm_edge.edge.demo_server import lan_address

    typer.echo(f"Serving the malm-edge demo at {url}  (Ctrl-C to stop)")
    lan = lan_address()
    if host in ("0.0.0.0", "::") and lan:
        phone_url = f"{scheme}://{lan}:{port}/"
        typer.echo(f"On a phone on the same network, open {phone_url}")
    else:
        lan = lan or "<this machine's LAN IP>"
        phone_url = f"{scheme}://{lan}:{port}/"
        typer.echo(f"To open it from a phone on the same network, restart with --host 0.0.0.0 and "
                   f"open {phone_url}")
    if scheme == "http":
        typer.echo(SECURE_CONTEXT_NOTE.format(ip=lan, origin=phone_url.rstrip("/"), port=port,
                                              bundle=bundle))


def demo(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder (manifest.json) "
                                         "with an ONNX encoder.")],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for phones on the LAN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    cert: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False,
                                                 help="PEM certificate: serve HTTPS.")] = None,
    key: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False,
                                                help="PEM private key of --cert.")] = None,
    isolate: Annotated[bool, typer.Option(help="Send the cross-origin-isolation headers "
                                          "(multi-threaded model).")] = True,
    app_dir: Annotated[Optional[Path], typer.Option(file_okay=False, help="The app folder "
                                                    "(default: mobile_demo/app of this checkout).")] = None,
    require_signature: Annotated[Optional[Path], typer.Option(
        "--require-signature", metavar="PUBKEY", help="Refuse the bundle unless signed by this Ed25519 key (PEM).")
    ] = None,
) -> None:
    """Serve the offline progressive web app with a bundle: photo -> recipes in the browser."""
    from malm_edge.edge.bundle import BundleError
    from malm_edge.edge.demo_server import DemoError, make_server

    if key is not None and cert is None:
        typer.echo("error: --key needs --cert", err=True)
        raise typer.Exit(1)
    try:
        server = make_server(bundle, host, port, app_dir=app_dir, isolate=isolate, certfile=cert,
                             keyfile=key, require_signature=require_signature)
    except (BundleError, DemoError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    bound_port = server.server_address[1]
    _announce(server.url, host, bound_port, server.scheme, bundle)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()

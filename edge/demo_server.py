"""The mobile demo's web server: the static app (mobile_demo/app) at / and one bundle under /bundle/.

Standard library only (http.server). Serves exactly:

- every regular file of the app folder (`/` is `index.html`);
- `/bundle/manifest.json` and the bundle files the manifest names (ONNX encoders, table, scales,
  sign codes of a two-stage table, catalog); nothing else of the bundle folder, and a query string
  (`?v=<sha256>`, the app's cache key) is ignored.

Every response carries the headers that make the page cross-origin isolated (COOP same-origin,
COEP require-corp: SharedArrayBuffer, so onnxruntime-web may use threads) and a strict
Content-Security-Policy; MIME types are explicit (application/wasm, text/javascript,
application/manifest+json). Responses carry an ETag and `Cache-Control: no-cache`, so browsers
revalidate (304) rather than download again; text and WASM files of the app are gzipped when the
browser accepts it (cached in memory once compressed).

Hardening: every served file is opened once at start-up (no symlinks, nothing whose real path
leaves its folder) and served from that open file, so a file swapped or linked in afterwards is
never read; a bundle file is hashed through the very descriptor that serves it, and a file whose
size changed since start-up is refused (410). Each connection has a timeout (`CONNECTION_TIMEOUT_S`,
slow or half-sent requests are dropped) and at most `MAX_CONNECTIONS` are served at once; others
get 503 and are closed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import mimetypes
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from malm_edge.edge.bundle import MANIFEST_FILE, Bundle, BundleError, parse_manifest, read_bundle
from malm_edge.edge.errors import EdgeError
from malm_edge.edge.safe_json import loads
from malm_edge.edge.signing import SIGNATURE_FILE, trusted_key_record, verify_manifest_bytes

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[1] / "mobile_demo" / "app"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; "
    "img-src 'self' blob: data:; worker-src 'self' blob:; style-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".onnx": "application/octet-stream",
    ".sqlite": "application/vnd.sqlite3",
}
_GZIP_TYPES = {".html", ".js", ".mjs", ".css", ".json", ".webmanifest", ".wasm", ".svg"}
_GZIP_MIN_BYTES = 1024
CONNECTION_TIMEOUT_S = 20.0  # idle keep-alive or a half-sent request: the connection is closed
MAX_CONNECTIONS = 64  # served at once; a browser opens about 6 per host
_BLOCK = 1 << 20
TRUSTED_KEY_FILE = "trusted-key.json"  # published with --require-signature (mobile_demo/app/js/signature.js)


class DemoError(EdgeError, ValueError):
    """The demo cannot be served (no app files, no ONNX encoder in the bundle); names the path."""


def content_type(path: Path) -> str:
    """MIME type by extension; unknown files are served as bytes."""
    return MIME_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or \
        "application/octet-stream"


@dataclass(frozen=True)
class ServedFile:
    """A file opened once at start-up and served from that descriptor.

    Attributes:
        path: Where it was opened (for the log and the MIME type).
        fd: The open descriptor (read with os.pread, so threads share it safely).
        size: Its size at start-up; a different size later means it was changed in place.
        etag: Validator from size and mtime at start-up.
    """

    path: Path
    fd: int
    size: int
    etag: str

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return os.pread(self.fd, self.size - offset if length is None else length, offset)

    def blocks(self) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            block = os.pread(self.fd, min(_BLOCK, self.size - offset), offset)
            if not block:
                return
            offset += len(block)
            yield block

    def changed(self) -> bool:
        """True when the open file's size differs from start-up (rewritten in place)."""
        return os.fstat(self.fd).st_size != self.size


def open_served(path: Path, folder: Path) -> ServedFile:
    """Open `path` for serving: a regular file, not a symlink, whose real path stays in `folder`."""
    real_folder = os.path.realpath(folder)
    if path.is_symlink() or not os.path.realpath(path).startswith(real_folder + os.sep):
        raise DemoError(f"{path}: a symbolic link or outside {folder}; refusing to serve it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise DemoError(f"{path}: cannot open ({err.strerror})") from None
    stat = os.fstat(fd)
    if not (stat.st_mode & 0o170000) == 0o100000:  # S_ISREG
        os.close(fd)
        raise DemoError(f"{path}: not a regular file; refusing to serve it")
    return ServedFile(path, fd, stat.st_size, f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')


def served_bytes(name: str, data: bytes) -> ServedFile:
    """Bytes made at start-up, served like a file (from an anonymous temporary file)."""
    handle = tempfile.TemporaryFile()
    handle.write(data)
    handle.flush()
    fd = os.dup(handle.fileno())
    handle.close()
    return ServedFile(Path(name), fd, len(data), f'"{hashlib.sha256(data).hexdigest()[:16]}"')


def _check_served_manifest(served: ServedFile, bundle: Bundle, require_signature: str | os.PathLike | None) -> None:
    """The manifest bytes held open are the ones validated (and signed): no swap since read_bundle."""
    data = served.read()
    if require_signature is not None:
        verify_manifest_bytes(bundle.root, data, require_signature)
    if parse_manifest(loads(data, served.path, error=BundleError), served.path) != bundle.manifest:
        raise BundleError(f"{served.path}: changed while the server was starting; start it again")


def _sha256_served(served: ServedFile) -> str:
    digest = hashlib.sha256()
    for block in served.blocks():
        digest.update(block)
    return digest.hexdigest()


def _app_routes(app_dir: Path) -> dict[str, Path]:
    """URL path -> file for every regular file below the app folder (symlinks refused)."""
    index = app_dir / "index.html"
    if not index.is_file():
        raise DemoError(f"{index}: missing; the demo app is not there (a checkout of malm-edge "
                        "ships mobile_demo/app with its vendored runtime)")
    routes = {"/": index}
    for dirpath, _, filenames in os.walk(app_dir):
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                routes["/" + full.relative_to(app_dir).as_posix()] = full
    return routes


def _bundle_routes(bundle: Bundle) -> dict[str, tuple[Path, str | None]]:
    """URL path -> (file, expected sha256 or None) for manifest.json and the files the app uses."""
    manifest = bundle.manifest
    if not bundle.encoders_for("onnx"):
        raise DemoError(f"{bundle.root / MANIFEST_FILE}: the bundle has no ONNX encoder, which the "
                        "web demo needs (convert with the onnx target)")
    files = [(e.file, e.sha256) for e in bundle.encoders_for("onnx")]
    files += [(manifest.table.file, manifest.table.sha256), (manifest.catalog.file, manifest.catalog.sha256)]
    if manifest.table.scales_file:
        files.append((manifest.table.scales_file, manifest.table.scales_sha256))
    if manifest.table.codes_file:  # table versions 2 and 3: the sign codes (mobile_demo/app/js/twostage.js)
        files.append((manifest.table.codes_file, manifest.table.codes_sha256))
    routes: dict[str, tuple[Path, str | None]] = {f"/bundle/{MANIFEST_FILE}": (bundle.root / MANIFEST_FILE, None)}
    if (bundle.root / SIGNATURE_FILE).is_file():
        routes[f"/bundle/{SIGNATURE_FILE}"] = (bundle.root / SIGNATURE_FILE, None)
    for relative, sha256 in files:
        routes[f"/bundle/{Path(relative).as_posix()}"] = (bundle.path(relative), sha256)
    return routes


def open_routes(app_routes: dict[str, Path], bundle_routes: dict[str, tuple[Path, str | None]],
                app_dir: Path, bundle_dir: Path, verify_checksums: bool = True) -> dict[str, ServedFile]:
    """Open every served file once; bundle files are hashed through the descriptor that serves them."""
    opened: dict[str, ServedFile] = {}
    try:
        for url, path in app_routes.items():
            opened[url] = open_served(path, app_dir)
        for url, (path, sha256) in bundle_routes.items():
            served = opened[url] = open_served(path, bundle_dir)
            if verify_checksums and sha256 is not None and _sha256_served(served) != sha256:
                raise BundleError(f"{path}: sha256 mismatch (manifest {sha256[:12]}...); the file was "
                                  "modified or corrupted")
    except BaseException:
        for served in opened.values():
            os.close(served.fd)
        raise
    return opened


class DemoServer(ThreadingHTTPServer):
    """A threaded HTTP(S) server over a fixed route table.

    Attributes:
        routes: URL path -> file served.
        isolate: Send COOP/COEP (cross-origin isolation). False only to measure the
            single-threaded fallback.
        scheme: "http" or "https".
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], routes: dict[str, ServedFile], isolate: bool = True,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(address, DemoRequestHandler)
        self.routes, self.isolate = routes, isolate
        self.scheme = "https" if ssl_context else "http"
        if ssl_context is not None:
            # The handshake runs in the request thread, so a stalled client never blocks accept().
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._gzip_cache: dict[tuple[str, str], bytes] = {}
        self._gzip_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self.bytes_sent: dict[str, int] = {"app": 0, "bundle": 0}  # response bodies, by kind
        self.refused_connections = 0

    def process_request(self, request, client_address) -> None:  # noqa: ANN001 - stdlib signature
        """One thread per connection, at most `max_connections` at once; the rest get 503."""
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        for served in self.routes.values():
            try:
                os.close(served.fd)
            except OSError:
                pass

    def count_sent(self, url_path: str, size: int) -> None:
        """Add a response body's size to `bytes_sent` (for benchmarks and the demo's log)."""
        with self._gzip_lock:
            self.bytes_sent["bundle" if url_path.startswith("/bundle/") else "app"] += size

    @property
    def url(self) -> str:
        """Base URL of the server as bound (0.0.0.0 shows as 127.0.0.1)."""
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{port}/"

    def gzipped(self, url: str, served: ServedFile) -> bytes:
        """The gzip of a served file, compressed once."""
        key = (url, served.etag)
        with self._gzip_lock:
            if key not in self._gzip_cache:
                self._gzip_cache[key] = gzip.compress(served.read(), compresslevel=6, mtime=0)
            return self._gzip_cache[key]


class DemoRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the routes only; every response carries the isolation and CSP headers."""

    server: DemoServer
    server_version = "malm-edge-demo"
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S  # socket timeout per connection (StreamRequestHandler)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    def _common_headers(self) -> None:
        if self.server.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")

    def _send_error(self, status: HTTPStatus) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self._common_headers()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        url = unquote(urlsplit(self.path).path)
        served = self.server.routes.get(url)
        if served is None:
            self._send_error(HTTPStatus.NOT_FOUND)
            return
        if served.changed():
            logger.warning("%s: changed since the server started; not served", served.path)
            self._send_error(HTTPStatus.GONE)
            return
        etag = served.etag
        if etag in self.headers.get("If-None-Match", ""):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self._common_headers()
            self.send_header("ETag", etag)
            self.end_headers()
            return
        compress = (served.path.suffix.lower() in _GZIP_TYPES and served.size >= _GZIP_MIN_BYTES
                    and not url.startswith("/bundle/") and "gzip" in self.headers.get("Accept-Encoding", ""))
        body = self.server.gzipped(url, served) if compress else None
        size = len(body) if body is not None else served.size
        self.send_response(HTTPStatus.OK)
        self._common_headers()
        self.send_header("Content-Type", content_type(served.path))
        self.send_header("ETag", etag)
        self.send_header("Vary", "Accept-Encoding")
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        self.server.count_sent(url, size)
        if body is not None:
            self.wfile.write(body)
            return
        for block in served.blocks():
            self.wfile.write(block)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the browser went away or stalled mid-download

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()


def make_server(bundle_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
                app_dir: str | os.PathLike | None = None, isolate: bool = True,
                certfile: str | os.PathLike | None = None, keyfile: str | os.PathLike | None = None,
                verify_checksums: bool = True, max_connections: int = MAX_CONNECTIONS,
                require_signature: str | os.PathLike | None = None) -> DemoServer:
    """Validate the bundle and bind the demo server (call `serve_forever`, e.g. in a thread).

    Args:
        bundle_dir: The bundle folder (validated with `read_bundle`, checksums included).
        host: Address to bind; "0.0.0.0" to reach it from a phone on the same network.
        port: TCP port; 0 picks a free one (see `server.server_address`).
        app_dir: The built app (default: mobile_demo/app beside this package).
        isolate: Send the cross-origin-isolation headers (default). False serves the
            single-threaded fallback, for benchmarks.
        certfile: PEM certificate to serve HTTPS (phones need a secure context for the camera
            page's service worker); keyfile: its private key (None if inside certfile).
        verify_checksums: Hash every bundle file against the manifest first.
        max_connections: Connections served at once (one thread each); more get 503.
        require_signature: Trusted Ed25519 public key (PEM): refuse an unsigned or wrongly signed
            bundle; `manifest.sig` is then served too, for the app to check.

    Raises:
        BundleError: the bundle is invalid. DemoError: the app is missing or the bundle has no
            ONNX encoder. OSError: the port cannot be bound.
    """
    bundle = read_bundle(bundle_dir, verify_checksums=verify_checksums, require_signature=require_signature)
    app = Path(app_dir) if app_dir else APP_DIR
    # Served from descriptors opened (and, for bundle files, hashed again) here: later swaps are never read.
    routes = open_routes(_app_routes(app), _bundle_routes(bundle), app, bundle.root, verify_checksums)
    try:
        _check_served_manifest(routes[f"/bundle/{MANIFEST_FILE}"], bundle, require_signature)
        # The app pins this key and checks manifest.sig itself; {"required": false} without --require-signature.
        record = {"required": False}
        if require_signature is not None:
            record = {"required": True, **trusted_key_record(require_signature)}
        routes[f"/bundle/{TRUSTED_KEY_FILE}"] = served_bytes(TRUSTED_KEY_FILE, json.dumps(record).encode())
        context = None
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        return DemoServer((host, port), routes, isolate=isolate, ssl_context=context,
                          max_connections=max_connections)
    except BaseException:
        for served in routes.values():
            os.close(served.fd)
        raise


def lan_address() -> str | None:
    """This machine's address on the local network (the interface of the default route), if any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends no packet
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


__all__ = ["APP_DIR", "BundleError", "DemoError", "DemoServer", "make_server", "lan_address"]

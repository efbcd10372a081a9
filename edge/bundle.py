"""The on-device bundle, format v1: `manifest.json` dataclasses, writer and validating reader.

A bundle is a folder (docs/architecture.md, "Bundle format (v1)")::

    bundle/
      manifest.json            this module
      encoder_*.pte|.onnx|.mlpackage
      table.i8 + table.scales.f32   (or table.f16)   edge/table.py, table version 1
      table.i7 + table.scales.f32 + table.sign.u64   edge/twostage.py, table version 2
      catalog.sqlite            edge/catalog.py
      report.md|json|png        optional, named in `extra_files` (converters/report.py)
      manifest.sig              optional Ed25519 signature of manifest.json (edge/signing.py)

`read_bundle` validates everything it can *before* any file is loaded: format name and version,
field types, every referenced file present inside the bundle, file sizes and dims consistent
(table dim == every encoder's output dim == manifest embedding dim, table rows == catalog count),
then sha256 of every file (streamed). The manifest covers the whole folder: a file it does not name
(other than manifest.sig) is an error, and bundle files may not be symbolic links. With
`require_signature` the manifest's bytes are checked against `manifest.sig` before they are parsed.
Each problem raises `BundleError` naming the file and what is wrong. Torch-free: json, hashlib and
the standard library only (`cryptography`, the `sign` extra, only to verify signatures).

Checksums: a regular file's sha256 is of its bytes. A directory (a CoreML `.mlpackage`) is hashed
deterministically by `sha256_path`: sha256 over one line per regular file below it, sorted by
relative POSIX path (code-point order, as Python sorts str), each line
`<relative/posix/path>\\0<sha256 hex of the file>\\n` (UTF-8).
Empty directories and file metadata (times, modes) do not change the digest; symlinks are refused.

Every file an encoder needs must be the one file (or directory) its entry names: an `.onnx`
encoder is self-contained (weights inside, no external-data side file: export with
`torch.onnx.export(..., external_data=False)`; ONNX's 2 GB protobuf limit is far above a student).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from malm_edge.edge.errors import EdgeError
from malm_edge.edge.safe_json import JsonFileError, loads
from malm_edge.edge.table_codes import check_query_bits
from malm_edge.edge.write_errors import OutputWriteError, guard_writes

FORMAT_NAME = "malm-edge-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

TARGETS = ("executorch", "onnx", "coreml")
PIXEL_INPUTS = ("normalized", "rgb_0_255")
TABLE_DTYPES = {"int8": 1, "float16": 2, "float32": 4}  # dtype -> bytes per element (table v1)
TABLE_VERSIONS = (1, 2, 3)  # 1: exact int8/float16/float32 rows; 2: sign codes + 7-bit rows; 3: + 8-bit rows
TABLE_V2_FIELDS = ("version", "codes_file", "codes_sha256", "centre", "candidates")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSING_CHOICES = {
    "resize": ("shorter_side",),
    "interpolation": ("bicubic", "bilinear"),
    "crop": ("center",),
    "channel_order": ("RGB", "BGR"),
    "layout": ("NCHW", "NHWC"),
}
_HASH_BLOCK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kilobytes


class BundleError(EdgeError, ValueError):
    """A bundle is malformed or tampered with; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------
# Manifest dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a photo into the encoder's input: the one preprocessing type, from
    the training run's config to the bundle manifest (training's eval transform and edge/preprocess.py
    both read it).

    Attributes:
        input_size: Side S of the square crop fed to the encoder.
        resize_size: The shorter side is resized to this before the centre crop (>= input_size;
            None: input_size).
        resize: Resize rule; only "shorter_side".
        interpolation: PIL resampling filter, "bicubic" or "bilinear" (bundle format v1: bicubic).
        crop: Crop rule; only "center" (left = round((w - S) / 2)).
        mean: Per-channel mean subtracted after scaling, RGB order.
        std: Per-channel std divided by after subtracting the mean.
        channel_order: "RGB" or "BGR" channel order of the output (bundle format v1: RGB).
        layout: "NCHW" or "NHWC" (unbatched: CHW or HWC; bundle format v1: NCHW).
        scale: Multiplier from 8-bit values to 0..1 (1/255).
    """

    input_size: int = 224
    resize_size: int | None = None
    resize: str = "shorter_side"
    interpolation: str = "bicubic"
    crop: str = "center"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.resize_size is None:
            object.__setattr__(self, "resize_size", self.input_size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self._validate()

    def _validate(self) -> None:
        if self.input_size < 1 or self.resize_size < self.input_size:
            raise ValueError(f"need 1 <= input_size <= resize_size, got {self.input_size}, {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        for name, allowed in PREPROCESSING_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"preprocessing.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def crop_ratio(self) -> float:
        """input_size / resize_size (1.0 means no border is cut beyond the square)."""
        return self.input_size / self.resize_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for mean and std)."""
        record = dataclasses.asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Preprocessing":
        """Inverse of `to_dict`; unknown keys are an error (a newer format should not pass silently)."""
        unknown = set(record) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**record)


@dataclass
class TensorSpec:
    """Name, shape and dtype of an encoder input or output; a symbolic dim is a string."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


@dataclass
class Verification:
    """How the exported file compared with the eager model on real photos."""

    cosine_mean: float
    cosine_min: float
    top10_agreement: float
    n_photos: int


@dataclass
class EncoderEntry:
    """One exported image encoder in the bundle.

    Attributes:
        name: Unique name, e.g. "student_int8_xnnpack".
        file: Path relative to the bundle root (a `.mlpackage` is a directory).
        sha256: `sha256_path` of the file.
        target: "executorch" | "onnx" | "coreml".
        quantization: "none" | "int8" | "fp16" | "int8_weights" | "palettize6" ...
        input: The pixel input, (N, 3, S, S) float32 for NCHW.
        output: The embedding output, (N, D) float32, L2-normalised.
        size_bytes: Size on disk (sum of files for a directory).
        verification: Optional comparison against eager on real photos.
        pixel_input: "normalized" (default): the caller applies the manifest's scale, mean and
            std; "rgb_0_255": the model normalises internally (e.g. CoreML with the
            scale/bias folded in) and takes resized, cropped RGB as float32 0..255, NCHW.
    """

    name: str
    file: str
    sha256: str
    target: str
    quantization: str
    input: TensorSpec
    output: TensorSpec
    size_bytes: int
    verification: Verification | None = None
    pixel_input: str = "normalized"


@dataclass
class TableEntry:
    """The recipe embedding table: raw little-endian row-major files.

    Table version 1 (edge/table.py): `file` is [rows, dim] int8 (+ float32 scales), float16 or
    float32, searched exactly. Table version 2 (edge/twostage.py): `file` holds the 7-bit rows
    magnitudes (dtype "int7"), plus per-row scales, the sign codes (`codes_file`), the `centre` row and the
    prefilter's `candidates`. The v2 fields are absent from a v1 entry. Table version 3: `file` holds
    the 8-bit rows' magnitudes (dtype "int8n"), no scales file, and `centre` is D integers in
    -127..127 that `centre_scale` multiplies (absent from v1 and v2 entries), and the optional
    `query_bits` (1..4, absent: 1) says how the prefilter weighs the query (edge/twostage.py).
    """

    file: str
    dtype: str
    rows: int
    dim: int
    sha256: str
    scales_file: str | None = None
    scales_sha256: str | None = None
    version: int = 1
    codes_file: str | None = None
    codes_sha256: str | None = None
    centre: list[float] | None = None
    candidates: int | None = None
    centre_scale: float | None = None
    query_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; v1 and v2 entries are written exactly as before the later versions existed."""
        raw = asdict(self)
        if self.version == 1:
            for key in TABLE_V2_FIELDS:
                raw.pop(key)
        if self.version < 3:
            raw.pop("centre_scale")
        else:
            del raw["scales_file"], raw["scales_sha256"]
        if self.query_bits is None:
            raw.pop("query_bits")
        return raw


def table_file_bytes(table: TableEntry) -> dict[str, int]:
    """Expected size in bytes of each file of a table entry, by role."""
    if table.version in (2, 3):
        magnitudes = (table.dim + 1) // 2 + (table.dim + 3) // 4  # nibble + crumb planes
        codes = table.rows * 8 * ((table.dim + 63) // 64)
        if table.version == 3:  # + the bit-6 plane, no scales
            return {"table": table.rows * (magnitudes + (table.dim + 7) // 8), "table codes": codes}
        return {"table": table.rows * magnitudes, "table scales": table.rows * 4, "table codes": codes}
    sizes = {"table": table.rows * table.dim * TABLE_DTYPES[table.dtype]}
    if table.scales_file:
        sizes["table scales"] = table.rows * 4
    return sizes


@dataclass
class CatalogEntry:
    """The SQLite recipe catalog (edge/catalog.py); row i describes table row i."""

    file: str
    sha256: str
    count: int


@dataclass
class ExtraFile:
    """Any other file of the bundle (report.md, report.json, report.png): covered like the rest."""

    file: str
    sha256: str


@dataclass
class Manifest:
    """The whole `manifest.json`. `provenance` is free-form; conventional keys are
    teacher_config_hash, student_config_hash, teacher_run, student_run, metrics (dict)."""

    embedding_dim: int
    preprocessing: Preprocessing
    encoders: list[EncoderEntry]
    table: TableEntry
    catalog: CatalogEntry
    provenance: dict[str, Any] = field(default_factory=dict)
    extra_files: list[ExtraFile] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (keys in a stable, readable order)."""
        raw = asdict(self)
        raw["table"] = self.table.to_dict()
        order = ["format", "version", "created", "embedding_dim", "preprocessing", "encoders",
                 "table", "catalog", "extra_files", "provenance"]
        return {key: raw[key] for key in order}


@dataclass
class Bundle:
    """A validated bundle: its root folder and manifest, with resolved paths."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        """Absolute path of a file named in the manifest."""
        return self.root / relative

    @property
    def table_path(self) -> Path:
        return self.path(self.manifest.table.file)

    @property
    def scales_path(self) -> Path | None:
        scales = self.manifest.table.scales_file
        return self.path(scales) if scales else None

    @property
    def catalog_path(self) -> Path:
        return self.path(self.manifest.catalog.file)

    def encoders_for(self, target: str) -> list[EncoderEntry]:
        """Encoders of one target, in manifest order."""
        return [e for e in self.manifest.encoders if e.target == target]

    def encoder_path(self, entry: EncoderEntry) -> Path:
        return self.path(entry.file)


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file below `root`, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink():
                raise BundleError(f"{full}: symbolic links are not allowed inside a bundle")
        for name in filenames:
            full = Path(dirpath) / name
            found.append((full.relative_to(root).as_posix(), full))
    yield from sorted(found)


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or the deterministic directory digest described in the module doc."""
    path = Path(path)
    if not path.is_dir():
        return _sha256_file(path)
    digest = hashlib.sha256()
    for relative, full in _walk_files(path):
        digest.update(f"{relative}\0{_sha256_file(full)}\n".encode("utf-8"))
    return digest.hexdigest()


def size_path(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or the sum over the regular files of a directory."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    return sum(full.stat().st_size for _, full in _walk_files(path))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def make_encoder_entry(
    bundle_dir: str | os.PathLike,
    file: str,
    *,
    name: str,
    target: str,
    quantization: str,
    input: TensorSpec,
    output: TensorSpec,
    verification: Verification | None = None,
    pixel_input: str = "normalized",
) -> EncoderEntry:
    """An `EncoderEntry` for a file already inside the bundle, with its sha256 and size computed."""
    full = Path(bundle_dir) / file
    return EncoderEntry(name=name, file=file, sha256=sha256_path(full), target=target,
                        quantization=quantization, input=input, output=output,
                        size_bytes=size_path(full), verification=verification,
                        pixel_input=pixel_input)


def make_catalog_entry(bundle_dir: str | os.PathLike, file: str, count: int) -> CatalogEntry:
    """A `CatalogEntry` for a catalog already inside the bundle, with its sha256 computed."""
    return CatalogEntry(file=file, sha256=sha256_path(Path(bundle_dir) / file), count=count)


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `manifest.json` atomically (temp file + os.replace) and return its path.

    Raises:
        BundleError: the manifest would not pass `parse_manifest`, or holds NaN/Infinity.
    """
    bundle_dir = Path(bundle_dir)
    target = bundle_dir / MANIFEST_FILE
    data = manifest.to_dict()
    parse_manifest(data, target)  # never write a manifest this reader would refuse
    try:  # strict JSON: NaN/Infinity would break the phone apps' parsers
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise BundleError(f"{target}: cannot write a non-finite number ({err})") from err
    with guard_writes(target, OutputWriteError):
        bundle_dir.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=bundle_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    return target


def add_extra_files(bundle_dir: str | os.PathLike, files: list[str]) -> bool:
    """Name more files of the bundle in its manifest (e.g. the report), with their sha256.

    A signature no longer matches a changed manifest, so an existing `manifest.sig` is removed:
    sign again (`malm-edge sign`). Returns True when a signature was removed.
    """
    from malm_edge.edge.signing import SIGNATURE_FILE

    root = Path(bundle_dir)
    manifest = read_manifest(root)
    entries = {x.file: x for x in manifest.extra_files}
    for relative in files:
        _resolve(root, relative, "extra file", root / MANIFEST_FILE)
        entries[relative] = ExtraFile(relative, sha256_path(root / relative))
    manifest.extra_files = [entries[name] for name in sorted(entries)]
    write_manifest(root, manifest)
    signature = root / SIGNATURE_FILE
    if signature.exists():
        signature.unlink()
        return True
    return False


# --------------------------------------------------------------------------------------------
# Parsing (structure and types), then validation (files, sizes, dims, checksums)
# --------------------------------------------------------------------------------------------


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str, src: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BundleError(f"{src}: missing field '{where}{key}'")
    value = obj[key]
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or bad_bool:
        raise BundleError(f"{src}: field '{where}{key}' has type {type(value).__name__}, "
                          f"expected {kind}")
    return value


def _build(cls: type, raw: Any, where: str, src: Path) -> Any:
    """Dataclass `cls` from dict `raw`, checking required fields; unknown keys are ignored."""
    if not isinstance(raw, dict):
        raise BundleError(f"{src}: field '{where.rstrip('.')}' must be an object")
    kwargs = {}
    for spec in dataclasses.fields(cls):
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if spec.name in raw:
            kwargs[spec.name] = raw[spec.name]
        elif required:
            raise BundleError(f"{src}: missing field '{where}{spec.name}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise BundleError(f"{src}: field '{where.rstrip('.')}' is invalid: {err}") from err


def _check_types(obj: Any, spec: dict[str, Any], where: str, src: Path) -> None:
    for key, kind in spec.items():
        value = getattr(obj, key)
        if value is None and key in {"scales_file", "scales_sha256", "verification", "resize_size",
                                     "codes_file", "codes_sha256", "centre", "candidates", "centre_scale",
                                     "query_bits"}:
            continue
        _require({key: value}, key, kind, where, src)


def _parse_preprocessing(raw: Any, src: Path) -> Preprocessing:
    # Checked before the dataclass is built, so the messages say what format v1 supports.
    if not isinstance(raw, dict):
        raise BundleError(f"{src}: field 'preprocessing' must be an object")
    values = {f.name: raw.get(f.name, f.default) for f in dataclasses.fields(Preprocessing)}
    if values["resize_size"] is None:
        values["resize_size"] = values["input_size"]
    pre = SimpleNamespace(**values)
    _check_types(pre, {"input_size": int, "resize_size": int, "resize": str, "interpolation": str,
                       "crop": str, "mean": (list, tuple), "std": (list, tuple),
                       "channel_order": str, "layout": str, "scale": (int, float)},
                 "preprocessing.", src)
    supported = {"resize": "shorter_side", "interpolation": "bicubic", "crop": "center",
                 "channel_order": "RGB", "layout": "NCHW"}
    for key, value in supported.items():
        if getattr(pre, key) != value:
            raise BundleError(f"{src}: preprocessing.{key} = {getattr(pre, key)!r} is not supported "
                              f"by format v{FORMAT_VERSION} (expected {value!r})")
    if len(pre.mean) != 3 or len(pre.std) != 3 or any(s <= 0 for s in pre.std):
        raise BundleError(f"{src}: preprocessing.mean/std must be 3 values, std > 0")
    if pre.input_size <= 0 or pre.resize_size < pre.input_size:
        raise BundleError(f"{src}: preprocessing needs 0 < input_size <= resize_size, got "
                          f"{pre.input_size} and {pre.resize_size}")
    return _build(Preprocessing, raw, "preprocessing.", src)


def _parse_tensor(raw: Any, where: str, src: Path) -> TensorSpec:
    spec = _build(TensorSpec, raw, where, src)
    _check_types(spec, {"name": str, "shape": list, "dtype": str}, where, src)
    if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec.shape):
        raise BundleError(f"{src}: field '{where}shape' must hold integers or symbolic names")
    return spec


def _parse_encoder(raw: Any, index: int, src: Path) -> EncoderEntry:
    where = f"encoders[{index}]."
    entry = _build(EncoderEntry, raw, where, src)
    _check_types(entry, {"name": str, "file": str, "sha256": str, "target": str,
                         "quantization": str, "size_bytes": int}, where, src)
    if entry.target not in TARGETS:
        raise BundleError(f"{src}: {where}target = {entry.target!r}, expected one of {TARGETS}")
    if entry.pixel_input not in PIXEL_INPUTS:
        raise BundleError(f"{src}: {where}pixel_input = {entry.pixel_input!r}, expected one of "
                          f"{PIXEL_INPUTS}")
    entry.input = _parse_tensor(entry.input, where + "input.", src)
    entry.output = _parse_tensor(entry.output, where + "output.", src)
    if entry.verification is not None:
        entry.verification = _build(Verification, entry.verification, where + "verification.", src)
    return entry


def _parse_table(raw: Any, src: Path) -> TableEntry:
    table = _build(TableEntry, raw, "table.", src)
    _check_types(table, {"file": str, "dtype": str, "rows": int, "dim": int, "sha256": str,
                         "scales_file": str, "scales_sha256": str, "version": int}, "table.", src)
    if table.version not in TABLE_VERSIONS:
        raise BundleError(f"{src}: unknown table format version {table.version} "
                          f"(this reader supports table versions {list(TABLE_VERSIONS)})")
    if table.query_bits is not None and table.version != 3:
        raise BundleError(f"{src}: table.query_bits needs table version 3 (this table is version {table.version})")
    if table.version == 2:
        return _parse_table_v2(table, src)
    if table.version == 3:
        return _parse_table_v3(table, src)
    if table.dtype not in TABLE_DTYPES:
        raise BundleError(f"{src}: table.dtype = {table.dtype!r}, expected one of {list(TABLE_DTYPES)}")
    if table.dtype == "int8" and not (table.scales_file and table.scales_sha256):
        raise BundleError(f"{src}: an int8 table needs table.scales_file and table.scales_sha256")
    if table.rows < 0 or table.dim <= 0:
        raise BundleError(f"{src}: table.rows must be >= 0 and table.dim > 0")
    return table


def _parse_table_v2(table: TableEntry, src: Path) -> TableEntry:
    needed = ("codes_file", "codes_sha256", "centre", "candidates", "scales_file", "scales_sha256")
    missing = [key for key in needed if getattr(table, key) is None]
    if missing:
        raise BundleError(f"{src}: table version 2 needs " + ", ".join(f"table.{k}" for k in missing))
    _check_types(table, {"codes_file": str, "codes_sha256": str, "centre": list, "candidates": int,
                         "scales_file": str, "scales_sha256": str}, "table.", src)
    if table.dtype != "int7":
        raise BundleError(f"{src}: table.dtype = {table.dtype!r}, expected 'int7' for table version 2")
    if table.rows < 0 or table.dim <= 0 or table.candidates < 1:
        raise BundleError(f"{src}: table.rows must be >= 0, table.dim > 0 and table.candidates >= 1")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in table.centre)
    if len(table.centre) != table.dim or not numbers or not all(math.isfinite(v) for v in table.centre):
        raise BundleError(f"{src}: table.centre must be {table.dim} finite numbers (table.dim)")
    return table


def _parse_table_v3(table: TableEntry, src: Path) -> TableEntry:
    needed = ("codes_file", "codes_sha256", "centre", "centre_scale", "candidates")
    missing = [key for key in needed if getattr(table, key) is None]
    if missing:
        raise BundleError(f"{src}: table version 3 needs " + ", ".join(f"table.{k}" for k in missing))
    _check_types(table, {"codes_file": str, "codes_sha256": str, "centre": list, "candidates": int,
                         "centre_scale": (int, float)}, "table.", src)
    if table.dtype != "int8n":
        raise BundleError(f"{src}: table.dtype = {table.dtype!r}, expected 'int8n' for table version 3")
    if table.scales_file is not None or table.scales_sha256 is not None:
        raise BundleError(f"{src}: table version 3 has no scales file (its row scales are implied)")
    if table.rows < 0 or table.dim <= 0 or table.candidates < 1:
        raise BundleError(f"{src}: table.rows must be >= 0, table.dim > 0 and table.candidates >= 1")
    integers = all(isinstance(v, int) and not isinstance(v, bool) and -127 <= v <= 127 for v in table.centre)
    if len(table.centre) != table.dim or not integers:
        raise BundleError(f"{src}: table.centre must be {table.dim} integers in -127..127 (table.dim)")
    if not 0 < table.centre_scale < math.inf:  # NaN fails both; exact for ints of any size
        raise BundleError(f"{src}: table.centre_scale must be a finite number > 0")
    if table.centre_scale * table.centre_scale * sum(c * c for c in table.centre) >= 1:
        raise BundleError(f"{src}: table.centre x table.centre_scale must be shorter than 1 (the mean of unit rows)")
    if table.query_bits is not None:
        _check_types(table, {"query_bits": int}, "table.", src)
        try:
            check_query_bits(table.query_bits, table.dim)
        except ValueError as err:
            raise BundleError(f"{src}: table.{err}") from err
    return table


def parse_manifest(data: dict[str, Any], src: Path) -> Manifest:
    """A `Manifest` from a decoded manifest.json object; checks format, version, fields and types."""
    if not isinstance(data, dict):
        raise BundleError(f"{src}: the manifest must be a JSON object")
    fmt = _require(data, "format", str, "", src)
    if fmt != FORMAT_NAME:
        raise BundleError(f"{src}: format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = _require(data, "version", int, "", src)
    if version != FORMAT_VERSION:
        raise BundleError(f"{src}: unknown bundle format version {version} "
                          f"(this reader supports version {FORMAT_VERSION})")
    encoders_raw = _require(data, "encoders", list, "", src)
    if not encoders_raw:
        raise BundleError(f"{src}: 'encoders' is empty; a bundle needs at least one encoder")
    manifest = Manifest(
        embedding_dim=_require(data, "embedding_dim", int, "", src),
        preprocessing=_parse_preprocessing(_require(data, "preprocessing", dict, "", src), src),
        encoders=[_parse_encoder(raw, i, src) for i, raw in enumerate(encoders_raw)],
        table=_parse_table(_require(data, "table", dict, "", src), src),
        catalog=_build(CatalogEntry, _require(data, "catalog", dict, "", src), "catalog.", src),
        provenance=data.get("provenance", {}) or {},
        extra_files=[_parse_extra(raw, i, src) for i, raw in enumerate(_require(data, "extra_files", list, "", src))]
        if "extra_files" in data else [],
        created=str(data.get("created", "")),
    )
    _check_types(manifest.catalog, {"file": str, "sha256": str, "count": int}, "catalog.", src)
    names = [e.name for e in manifest.encoders]
    if len(set(names)) != len(names):
        raise BundleError(f"{src}: encoder names are not unique: {names}")
    return manifest


def _parse_extra(raw: Any, index: int, src: Path) -> ExtraFile:
    extra = _build(ExtraFile, raw, f"extra_files[{index}].", src)
    _check_types(extra, {"file": str, "sha256": str}, f"extra_files[{index}].", src)
    return extra


def _resolve(root: Path, relative: str, what: str, src: Path) -> Path:
    """Path of a referenced file, refusing anything that escapes the bundle folder."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or not relative:
        raise BundleError(f"{src}: {what} path {relative!r} must be relative and inside the bundle")
    full = root / candidate
    if full.is_symlink():
        raise BundleError(f"{full}: a symbolic link ({what}); bundle files must be regular files")
    if not full.exists():
        raise BundleError(f"{full}: missing ({what} named in {MANIFEST_FILE})")
    if not os.path.realpath(full).startswith(os.path.realpath(root) + os.sep):
        raise BundleError(f"{full}: resolves outside the bundle folder ({what})")
    return full


def _referenced_files(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(what, relative path, expected sha256) for every file the manifest names."""
    files = [(f"encoder '{e.name}'", e.file, e.sha256) for e in manifest.encoders]
    files.append(("table", manifest.table.file, manifest.table.sha256))
    if manifest.table.scales_file:
        files.append(("table scales", manifest.table.scales_file, manifest.table.scales_sha256 or ""))
    if manifest.table.version in (2, 3):
        files.append(("table codes", manifest.table.codes_file or "", manifest.table.codes_sha256 or ""))
    files.append(("catalog", manifest.catalog.file, manifest.catalog.sha256))
    files += [(f"extra file {x.file!r}", x.file, x.sha256) for x in manifest.extra_files]
    return files


def _check_covered(root: Path, manifest: Manifest) -> None:
    """Every file in the bundle folder is named by the manifest (or is the manifest or its signature).

    A file the manifest does not cover could be read by an app without any check, so it is an error.
    """
    from malm_edge.edge.signing import SIGNATURE_FILE

    named = {Path(relative).as_posix() for _, relative, _ in _referenced_files(manifest)}
    allowed = named | {MANIFEST_FILE, SIGNATURE_FILE}
    for dirpath, dirnames, filenames in os.walk(root):
        relative_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames):
            if (relative_dir / name).as_posix() in named:
                dirnames.remove(name)  # a directory encoder (.mlpackage) is hashed as a whole
        for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
            relative = (relative_dir / name).as_posix()
            if relative not in allowed:
                raise BundleError(f"{root / relative}: not named in {MANIFEST_FILE}; a bundle holds only the "
                                  "files its manifest covers (remove it, or rebuild the bundle)")


def _check_dims(manifest: Manifest, root: Path) -> None:
    dim, table = manifest.embedding_dim, manifest.table
    table_path = root / table.file
    if table.dim != dim:
        raise BundleError(f"{table_path}: table dim {table.dim} != manifest embedding_dim {dim}")
    for entry in manifest.encoders:
        out_dim = entry.output.shape[-1] if entry.output.shape else None
        if out_dim != dim:
            raise BundleError(f"{root / entry.file}: encoder '{entry.name}' output dim {out_dim} "
                              f"!= manifest embedding_dim {dim}")
        _check_input_shape(entry, manifest.preprocessing, root)
    if table.rows != manifest.catalog.count:
        raise BundleError(f"{root / manifest.catalog.file}: catalog count {manifest.catalog.count} "
                          f"!= table rows {table.rows}")


def _check_input_shape(entry: EncoderEntry, pre: Preprocessing, root: Path) -> None:
    """NCHW input [N, 3, S, S]; symbolic (string) dims are accepted anywhere."""
    shape, size = entry.input.shape, pre.input_size
    fixed_ok = all(isinstance(d, str) or d == want for d, want in zip(shape[1:], (3, size, size)))
    if len(shape) != 4 or not fixed_ok:
        raise BundleError(f"{root / entry.file}: encoder '{entry.name}' input shape {shape} "
                          f"does not match NCHW [N, 3, {size}, {size}] from preprocessing")


def _check_sizes(manifest: Manifest, root: Path) -> None:
    table = manifest.table
    files = {"table": table.file, "table scales": table.scales_file, "table codes": table.codes_file}
    what = {"table": f"{table.rows} x {table.dim} {table.dtype}",
            "table scales": f"{table.rows} float32 scales",
            "table codes": f"{table.rows} sign codes of {(table.dim + 63) // 64} 64-bit words"}
    for role, expected in table_file_bytes(table).items():
        actual = (root / files[role]).stat().st_size
        if actual != expected:
            raise BundleError(f"{root / files[role]}: {actual} bytes, expected {expected} for {what[role]}")
    for entry in manifest.encoders:
        actual = size_path(root / entry.file)
        if actual != entry.size_bytes:
            raise BundleError(f"{root / entry.file}: {actual} bytes, manifest says {entry.size_bytes}")


def read_manifest(bundle_dir: str | os.PathLike, *,
                  require_signature: str | os.PathLike | None = None) -> Manifest:
    """Parse and type-check `manifest.json` only (no file checks); see `read_bundle`.

    Args:
        bundle_dir: The bundle folder.
        require_signature: A trusted Ed25519 public key (PEM file): the manifest's exact bytes must
            carry a valid signature by it (`manifest.sig`, edge/signing.py) before they are parsed.
    """
    src = Path(bundle_dir) / MANIFEST_FILE
    if src.is_symlink():
        raise BundleError(f"{src}: a symbolic link; the manifest must be a regular file")
    if not src.is_file():
        raise BundleError(f"{src}: missing; {bundle_dir} is not a malm-edge bundle")
    size = src.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{src}: {size} bytes, over the limit of {MAX_MANIFEST_BYTES} for a manifest")
    data = src.read_bytes()  # read once: the bytes verified are the bytes parsed
    if require_signature is not None:
        from malm_edge.edge.signing import verify_manifest_bytes

        verify_manifest_bytes(Path(bundle_dir), data, require_signature)
    try:
        decoded = loads(data, src)
    except JsonFileError as err:
        detail = str(err).split(": ", 1)[-1]
        raise BundleError(f"{src}: not valid JSON ({detail})") from None
    return parse_manifest(decoded, src)


def read_bundle(bundle_dir: str | os.PathLike, *, verify_checksums: bool = True,
                require_signature: str | os.PathLike | None = None) -> Bundle:
    """Validate a bundle before anything in it is loaded, and return it.

    Order: signature of the manifest's bytes (when `require_signature`) -> manifest
    format/version/fields -> every referenced file present inside the bundle, a regular file ->
    nothing else in the folder (every file is covered by the manifest) -> dims and file sizes
    consistent -> sha256 of every file (streamed; skipped only if verify_checksums is False, e.g.
    in a benchmark loop).

    Args:
        bundle_dir: The bundle folder.
        verify_checksums: Hash every referenced file against the manifest.
        require_signature: A trusted Ed25519 public key file (PEM): refuse the bundle unless its
            manifest is signed by that key (edge/signing.py).

    Returns:
        The validated `Bundle`.

    Raises:
        BundleError: naming the offending file and what is wrong.
    """
    root = Path(bundle_dir)
    src = root / MANIFEST_FILE
    manifest = read_manifest(root, require_signature=require_signature)
    files = _referenced_files(manifest)
    for what, relative, _ in files:
        _resolve(root, relative, what, src)
    _check_covered(root, manifest)
    _check_dims(manifest, root)
    _check_sizes(manifest, root)
    if verify_checksums:
        for what, relative, expected in files:
            actual = sha256_path(root / relative)
            if actual != expected:
                raise BundleError(f"{root / relative}: sha256 mismatch for {what} "
                                  f"(manifest {expected[:12]}..., file {actual[:12]}...); "
                                  "the file was modified or corrupted")
    return Bundle(root=root, manifest=manifest)

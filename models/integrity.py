"""Checksums and a torch-free soundness check of an artifact folder, so a damaged model is refused.

When an artifact is written, the sha256 and size of each of its files go into checksums.json;
loading verifies them, so a flipped byte, a truncated copy, or a file added, removed or swapped
later is refused instead of served. The weights are also read as safetensors and refused unless
every float in them is finite: that catches damage to artifacts written before checksums were
recorded, and NaN or infinity that a writer let through.

Standard library only: BentoML's supervisor process runs these checks before it starts any
worker (service.integrity), and that process must not import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CHECKSUMS_FILE = "checksums.json"
WEIGHTS_FILE = "weights.safetensors"
# Files beside an artifact that belong to the model store, not to the artifact: the store's own
# model.yaml, and training.store's bentoml.json (the tag a shipped copy is imported under).
STORE_FILES = frozenset({"model.yaml", "bentoml.json"})

# safetensors dtypes: bytes per element
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
              "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
# A float is inf or NaN exactly when its exponent bits are all ones. Where those bits lie in the
# top two bytes of a little-endian element (read big-endian, the sign bit left out):
EXPONENT_MASKS = {"F64": 0x7FF0, "F32": 0x7F80, "F16": 0x7C00, "BF16": 0x7F80}
# byte -> 1 where it has every bit of the mask set (a translate() table), per mask byte used above
ONES_WHERE = {mask: bytes(int((b & mask) == mask) for b in range(256))
              for m in EXPONENT_MASKS.values() for mask in (m >> 8, m & 0xFF)}


# The weights are checked this many bytes at a time: small copies, which the allocator reuses.
CHUNK_BYTES = 1 << 20


class ArtifactError(ValueError):
    """An artifact folder is incomplete, damaged, or its parts disagree."""


def sha256_of(data: bytes | mmap.mmap) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes, mapped rather than read: the supervisor that checks them before serving
    would otherwise keep the heap a whole weights file grew it by (glibc does not give it back)."""
    with open(path, "rb") as file:
        if file.seek(0, 2) == 0:
            yield b""  # an empty file cannot be mapped
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def artifact_files(directory: Path) -> list[Path]:
    """Every entry of the folder that is part of the artifact (a stray folder counts too)."""
    return sorted(p for p in directory.iterdir() if p.name not in STORE_FILES | {CHECKSUMS_FILE})


def read_checksums(directory: Path) -> dict[str, dict[str, Any]] | None:
    """{file name: {"sha256", "size"}} from checksums.json; None when the artifact has none."""
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not all(isinstance(e["sha256"], str) and isinstance(e["size"], int) for e in files.values()):
            raise TypeError("an entry without a sha256 string and a size")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{path}: not a readable checksums file ({err})") from err
    return files


def record_checksums(directory: str | Path, names: Iterable[str] | None = None) -> None:
    """Write checksums.json for every file of the artifact, or add (replace) those in `names`."""
    directory = Path(directory)
    if names is None:
        files: dict[str, dict[str, Any]] = {}
        paths = artifact_files(directory)
    else:
        files = read_checksums(directory) or {}
        paths = [directory / name for name in names]
    for path in paths:
        data = path.read_bytes()
        files[path.name] = {"sha256": sha256_of(data), "size": len(data)}
    manifest = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
    (directory / CHECKSUMS_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def verify_artifact(directory: str | Path, checksums: dict[str, dict[str, Any]] | None = None) -> bool:
    """Check every file against the recorded checksums (those of `directory`'s checksums.json, or
    `checksums`), then that the weights are sound safetensors with finite floats.

    Raises ArtifactError naming the file and what is wrong. Returns False when there were no
    checksums to verify (an artifact written before they were recorded): only the weights were
    checked then.
    """
    directory = Path(directory)
    if checksums is None:
        checksums = read_checksums(directory)
    weights = directory / WEIGHTS_FILE
    if checksums is None:
        if not weights.is_file():
            raise ArtifactError(f"missing artifact file: {weights}")
        with mapped(weights) as data:
            check_weights(weights, data)
        return False
    present = {p.name: p for p in artifact_files(directory)}
    for name in sorted(present.keys() - checksums.keys()):
        raise ArtifactError(f"{present[name]}: not in {CHECKSUMS_FILE}: the artifact was changed "
                            "after it was written")
    for name, recorded in sorted(checksums.items()):
        path = directory / name
        if name not in present or not path.is_file():
            raise ArtifactError(f"missing artifact file: {path} ({CHECKSUMS_FILE} lists it)")
        with mapped(path) as data:
            if len(data) != recorded["size"]:
                raise ArtifactError(f"{path}: {len(data):,} bytes where {CHECKSUMS_FILE} recorded "
                                    f"{recorded['size']:,}: the file is truncated or was appended to")
            digest = sha256_of(data)
            if digest != recorded["sha256"]:
                raise ArtifactError(f"{path}: sha256 {digest[:12]}... where {CHECKSUMS_FILE} recorded "
                                    f"{recorded['sha256'][:12]}...: the file changed after it was "
                                    "written")
            if name == WEIGHTS_FILE:
                check_weights(path, data)
    if WEIGHTS_FILE not in checksums:
        raise ArtifactError(f"missing artifact file: {weights}")
    return True


def check_weights(path: Path, data: bytes | mmap.mmap) -> None:
    """`data` (the bytes of `path`) is a complete safetensors file whose floats are all finite.

    The layout (github.com/huggingface/safetensors): an 8-byte little-endian header length, a
    JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the tensors' bytes.
    """
    if len(data) < 8:
        raise ArtifactError(f"{path}: not a safetensors file: {len(data)} bytes")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise ArtifactError(f"{path}: not a safetensors file: its header claims {header_size:,} bytes "
                            f"of a {len(data):,}-byte file (truncated or not safetensors)")
    try:
        header = json.loads(data[8:8 + header_size])
        header.pop("__metadata__", None)
        tensors = {name: (entry["dtype"], math.prod(entry["shape"]), *entry["data_offsets"])
                   for name, entry in header.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{path}: not a safetensors file: unreadable header ({err})") from err
    body_size = len(data) - 8 - header_size
    end = max((t[3] for t in tensors.values()), default=0)
    if end != body_size:
        raise ArtifactError(f"{path}: the header describes {end:,} bytes of tensors, the file holds "
                            f"{body_size:,}: the file is truncated or was appended to")
    for name, (dtype, count, begin, stop) in tensors.items():
        if dtype not in ITEM_SIZES:
            raise ArtifactError(f"{path}: tensor {name!r} has dtype {dtype!r}, which this code does not read")
        if not 0 <= begin <= stop or stop - begin != count * ITEM_SIZES[dtype]:
            raise ArtifactError(f"{path}: tensor {name!r}: bytes {begin}..{stop} do not hold "
                                f"{count} values of {dtype}")
        start = 8 + header_size + begin
        if dtype in EXPONENT_MASKS and has_non_finite(data, start, start + stop - begin,
                                                      ITEM_SIZES[dtype], EXPONENT_MASKS[dtype]):
            raise ArtifactError(f"{path}: tensor {name!r} holds NaN or infinite values")


def has_non_finite(data: bytes | mmap.mmap, start: int, stop: int, width: int,
                   exponent_mask: int) -> bool:
    """True when any little-endian float of `width` bytes in data[start:stop] has an all-ones
    exponent.

    Byte-wise, so it runs at C speed without numpy or torch: the top byte and the next one of
    each element are mapped to 1 where they carry all of their share of the exponent bits.
    """
    step = CHUNK_BYTES - CHUNK_BYTES % width
    for chunk in range(start, stop, step):
        end = min(chunk + step, stop)
        top = data[chunk + width - 1:end:width].translate(ONES_WHERE[exponent_mask >> 8])
        next_ = data[chunk + width - 2:end:width].translate(ONES_WHERE[exponent_mask & 0xFF])
        if int.from_bytes(top, "little") & int.from_bytes(next_, "little"):
            return True
    return False


def verify_model(tag: str, directory: str | Path,
                 checksums: dict[str, dict[str, Any]] | None = None) -> bool:
    """verify_artifact for the store model `tag` in `directory`, its tag leading the error."""
    try:
        return verify_artifact(directory, checksums)
    except ArtifactError as err:
        raise ArtifactError(f"model {tag} is damaged: {err}") from err

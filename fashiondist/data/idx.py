"""IDX files, the format Fashion-MNIST (and MNIST) ship in: read with validation, write deterministically.

An IDX file is a big-endian header, then the raw array: two zero bytes, a type byte (0x08 = uint8), the
number of dimensions, one uint32 per dimension, then the values row-major. Images are 3-D (N, 28, 28),
labels 1-D (N). Files may be gzip-compressed (`.gz`, detected by content, not by name).

Every problem is an InputError naming the file, because a wrong or damaged file is the user's to fix.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from fashiondist.atomic_io import atomic_write
from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from fashiondist.errors import InputError

UINT8_TYPE = 0x08  # the only IDX element type Fashion-MNIST uses
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise InputError(f"{path}: not a readable gzip file ({err})") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in an IDX file, after checking its magic number, rank and length."""
    path = Path(path)
    data = _read_bytes(path)
    expected_magic = (UINT8_TYPE << 8) | ndim  # 0x0803 for images, 0x0801 for labels
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != UINT8_TYPE or data[3] != ndim:
        found = data[:4].hex() or "nothing"
        raise InputError(
            f"{path}: not a {ndim}-D uint8 IDX file (magic number 0x{found}, expected 0x{expected_magic:08x})"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise InputError(f"{path}: IDX header is cut off ({len(data)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise InputError(
            f"{path}: IDX dimensions {'x'.join(map(str, dims))} need {expected} bytes, the file has {len(data)}"
            + (" (truncated?)" if len(data) < expected else "")
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_images(path: str | Path) -> np.ndarray:
    """uint8 [N, 28, 28] images from an IDX3 file; any other image size is an error naming the file."""
    images = read_idx(path, ndim=3)
    if images.shape[1:] != (IMAGE_HEIGHT, IMAGE_WIDTH):
        raise InputError(
            f"{path}: images are {images.shape[1]}x{images.shape[2]}, expected {IMAGE_HEIGHT}x{IMAGE_WIDTH}"
        )
    return images


def read_idx_labels(path: str | Path) -> np.ndarray:
    """int64 [N] labels from an IDX1 file (stored as uint8)."""
    return read_idx(path, ndim=1).astype(np.int64)


def read_idx_pair(images_path: Path, labels_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and, when a labels file is given, their labels; the two counts must agree."""
    images = read_idx_images(images_path)
    if labels_path is None:
        return images, None
    labels = read_idx_labels(labels_path)
    if len(labels) != len(images):
        raise InputError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the two files must have the same count"
        )
    return images, labels


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """`directory/stem`, or `directory/stem.gz` when only the compressed file is there; None if neither."""
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX, atomically; a `.gz` path is compressed byte-reproducibly (mtime 0)."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX arrays here are uint8, got {array.dtype}")
    header = bytes([0, 0, UINT8_TYPE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_write(path) as f:
        f.write(header)
        f.write(np.ascontiguousarray(array).tobytes())

"""The IDX file format of the original MNIST and Fashion-MNIST files: writing and parsing
unsigned-byte arrays.
"""

from __future__ import annotations

import math
import struct

import numpy as np

__all__ = ["idx_header", "idx_bytes", "parse_idx"]


def idx_header(shape: tuple[int, ...]) -> bytes:
    """The header of an unsigned-byte IDX file holding an array of ``shape``.

    Args:
        shape: the array's shape, e.g. ``(60000, 28, 28)``.

    Returns:
        The magic number (``0x08`` in its third byte, the rank in its fourth) and each size, big-endian.
    """
    return struct.pack(f">I{len(shape)}I", 0x0800 | len(shape), *shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialises a uint8 array as an IDX file (big-endian header, then raw bytes).

    The magic number is ``0x08`` (unsigned byte) in its third byte and the rank
    in its fourth: 2051 for ``[N, 28, 28]`` images, 2049 for ``[N]`` labels.

    Args:
        array: the values, cast to uint8.

    Returns:
        The file's bytes: :func:`idx_header`, then the values in C order.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return idx_header(array.shape) + array.tobytes()


def parse_idx(raw: bytes) -> np.ndarray:
    """Inverse of :func:`idx_bytes`: parses an unsigned-byte IDX file.

    Args:
        raw: the file's bytes (uncompressed).

    Returns:
        The uint8 array of the shape its header gives.

    Raises:
        ValueError: the bytes are not an unsigned-byte IDX file.
    """
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else 0
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim == 0:
        raise ValueError(f"not an unsigned-byte IDX file (magic {magic})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"IDX header says {dims} but {data.size} bytes follow it")
    return data.reshape(dims)

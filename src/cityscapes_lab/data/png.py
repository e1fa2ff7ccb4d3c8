"""PNG decoding, encoding and header checks.

Decoding a Cityscapes photo is nearly all zlib inflate. Where libdeflate (``deflate``) and libspng (``pyspng``) are
installed, libdeflate inflates the image data (about twice as fast as zlib), the filtered rows are re-wrapped as
stored (uncompressed) deflate blocks, and libspng only unfilters them: about 1.25x faster than libspng alone and
1.4x faster than OpenCV. Otherwise libspng or OpenCV decode directly. Arrays are RGB(A), never OpenCV's BGR.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

try:  # optional accelerators
    import pyspng as _spng
except ImportError:  # pragma: no cover - depends on the environment
    _spng = None
try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - depends on the environment
    _libdeflate = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_COLOUR_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> channels (3 = palette)


class PngError(ValueError):
    """Bytes that are not a readable PNG."""


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA

    @property
    def channels(self) -> int:
        return _COLOUR_CHANNELS.get(self.colour_type, 0)


def parse_header(head: bytes) -> PngHeader:
    """The IHDR of a PNG from its first 33 bytes; raises PngError if they are not a PNG's."""
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise PngError("not a PNG file (bad signature or header)")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0 or colour_type not in _COLOUR_CHANNELS:
        raise PngError("corrupt PNG header")
    return PngHeader(width, height, bit_depth, colour_type)


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = _libdeflate.crc32(body, _libdeflate.crc32(kind))
    return b"".join((struct.pack(">I", len(body)), kind, body, struct.pack(">I", crc)))


def _inflated_copy(data: bytes) -> bytes | None:
    """The same PNG with its image data inflated by libdeflate and stored uncompressed, or None where this does
    not apply (interlaced, palette or unusual PNGs: they take the plain path)."""
    header = parse_header(data[:33])
    interlaced = data[28]
    if interlaced or header.colour_type not in (0, 2, 4, 6) or header.bit_depth != 8:
        return None
    parts, pos, view = [], 8, memoryview(data)
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack_from(">I", data, pos), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(view[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    row_bytes = 1 + header.width * header.channels
    if len(data) * 8 < header.height * row_bytes:
        return None  # well compressed (a label map): plain libspng is faster than the re-wrap
    try:
        rows = _libdeflate.zlib_decompress(b"".join(parts), header.height * row_bytes)
    except _libdeflate.DeflateError as exc:
        raise PngError(f"corrupt or truncated PNG ({exc})") from None
    if len(rows) != header.height * row_bytes:
        raise PngError("corrupt or truncated PNG (too little image data)")
    stored = _libdeflate.zlib_compress(rows, 0)  # level 0: stored blocks, a copy plus a checksum
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", data[16:29]), _chunk(b"IDAT", stored), _chunk(b"IEND", b"")))


def decode_grey16_pairs(data: bytes) -> np.ndarray | None:
    """A 16-bit greyscale PNG (instance ids) as (H, W, 2) uint8 big-endian byte pairs (high, low) through libspng:
    its rows are byte-for-byte those of an 8-bit grey+alpha PNG of the same size (2 bytes per pixel, filtered with
    2-byte steps), so the header is relabelled. None if not applicable (no libspng/libdeflate, interlaced, ...)."""
    header = parse_header(data[:33])
    if (header.colour_type != 0 or header.bit_depth != 16 or data[28] != 0 or _spng is None
            or _libdeflate is None):
        return None
    ihdr = data[16:24] + bytes([8, 4]) + data[26:29]
    relabelled = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + data[33:]
    try:
        return np.ascontiguousarray(_spng.load(relabelled))
    except Exception as exc:
        raise PngError(f"corrupt or truncated PNG ({exc})") from None


def decode(data: bytes) -> np.ndarray:
    """Decode PNG bytes to (H, W) or (H, W, C) uint8/uint16, RGB order; raises PngError."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG file (bad signature)")
    if data[24:25] == b"\x10":
        pairs = decode_grey16_pairs(data)
        if pairs is not None:
            return pairs.view(">u2")[..., 0].astype(np.uint16)  # big-endian pairs -> native
    if _spng is not None and data[24:25] == b"\x08":  # pyspng itself mis-decodes 16-bit greyscale
        if _libdeflate is not None:
            data = _inflated_copy(data) or data
        try:
            return _spng.load(data)
        except Exception as exc:  # libspng raises a plain RuntimeError/ValueError for corrupt data
            raise PngError(f"corrupt or truncated PNG ({exc})") from None
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise PngError("corrupt or truncated PNG")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return array


def encode(array: np.ndarray, compression: int = 3) -> bytes:
    """Encode (H, W) grey or (H, W, 3|4) RGB(A) uint8/uint16 as PNG bytes (deterministic for one OpenCV)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported dtypes
        raise PngError(f"cannot encode a {array.dtype} array of shape {array.shape} as PNG")
    return buffer.tobytes()

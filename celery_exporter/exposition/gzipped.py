"""Gzip for a body made of pieces that are compressed once and kept.

Each piece (a family's bytes, see `kept`) is deflated on its own (level 1: 3x faster than 6,
8 % larger) and ends on a byte boundary (a sync flush), so the deflate pieces of consecutive
families simply follow one another in one gzip stream. A `Packed` piece also carries the
CRC-32 and length of its plain bytes: the stream's CRC is combined from the pieces' CRCs
(zlib's crc32_combine, which Python's zlib does not expose, is below), so an unchanged
family is neither compressed nor read again, and its plain bytes need not be kept at all.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Iterator, List, NamedTuple

HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
_FINAL = zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block

# CRC-32 arithmetic: polynomials over GF(2) modulo the CRC-32 polynomial, in zlib's
# bit-reflected form (the x^0 coefficient is the top bit of 32).
_POLY = 0xEDB88320
_ONE = 1 << 31  # x^0


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial."""
    product = 0
    mask = _ONE
    while mask and a:
        if a & mask:
            product ^= b
            a ^= mask
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> List[int]:
    """x^(2^k) for k = 0..31: x^1, then each the square of the one before."""
    out, p = [], _ONE >> 1
    for _ in range(32):
        out.append(p)
        p = _multiply(p, p)
    return out


_X_POW_2K = _powers()


def shift_of(size: int) -> int:
    """x^(8 * size): what a CRC is multiplied by when `size` bytes follow it."""
    p, k, n = _ONE, 3, size
    while n:
        if n & 1:
            p = _multiply(_X_POW_2K[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, shift2: int) -> int:
    """The CRC-32 of A + B from crc(A), crc(B) and shift_of(len(B))."""
    return _multiply(shift2, crc1) ^ crc2


class Packed(NamedTuple):
    """A piece's raw deflate (sync-flushed), and its plain bytes' CRC-32, length and shift."""

    deflate: bytes
    crc: int
    size: int
    shift: int


def pack(data: bytes) -> Packed:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    deflate = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return Packed(deflate, zlib.crc32(data), len(data), shift_of(len(data)))


def stream(pieces: Iterable[Packed]) -> Iterator[bytes]:
    """One gzip stream of the pieces' plain bytes, in order."""
    crc = size = 0
    yield HEADER
    for piece in pieces:
        crc = crc32_combine(crc, piece.crc, piece.shift)
        size += piece.size
        yield piece.deflate
    yield _FINAL
    yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)

"""A PNG encoder that filters and deflates row bands on several threads.

Why by hand: Pillow (and the other PNG writers on PyPI: pypng, imageio's, OpenCV's) filter and deflate one
image on one core, and a sweep's summary grid (e.g. 4000x4000 RGB) takes ~1 s that way, on the critical
path after the last cell. This is the pigz technique: the filtered rows are cut into bands, each band is
deflated on its own thread as an independent raw-deflate stream ended by Z_SYNC_FLUSH (the last by
Z_FINISH), and the streams are concatenated after one zlib header, followed by the adler32 of all the
filtered data. The result is one ordinary zlib stream, so the file is a standard PNG that every decoder
reads. Bands depend on the image size only, never on the thread count, so the bytes do not either.

``compress_level=1`` (the fastest, used for sweep grids and previews) deflates with ISA-L (python-isal's
``isal_zlib``, level 1) instead of zlib: on a 3984x3984 photo-like grid 5.7x faster than zlib's level 1 and 8 %
smaller (0.15 vs 0.86 s on one core, benchmarks/bench_png_host.py), and it releases the GIL while it works, as zlib does.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from isal import isal_zlib
from PIL import Image, PngImagePlugin

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}  # the 8-bit modes written here; others go to Pillow
IDAT_MAX = 1 << 20  # bytes of zlib stream per IDAT chunk (any size < 2**31 is valid)
BLOCK_BYTES = 1 << 18  # rows filtered together inside a band: large enough for numpy, small enough for the cache
_ADLER_BASE = 65521


def encode_png(image: Image.Image, text: dict[str, str] | None = None, compress_level: int = 6,
               workers: int | None = None) -> bytes:
    """``image`` as PNG bytes, with ``text`` as uncompressed iTXt chunks (as Pillow's ``PngInfo.add_itxt``).

    Modes L, LA, RGB, RGBA are filtered and deflated here on ``workers`` threads (None: up to 8); any other
    mode, or an image whose ``info`` carries what Pillow would also write (ICC profile, transparency),
    is saved by Pillow with the same text chunks. The bytes do not depend on ``workers``.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1 (or None: up to 8), got {workers}")
    if not -1 <= compress_level <= 9:
        raise ValueError(f"compress_level must be 0-9 (zlib; -1: its default, 6), got {compress_level}")
    text = dict(text or {})
    for key in text:
        _check_key(key)
    width, height = image.size
    if image.mode not in COLOR_TYPE or not width or not height or {"icc_profile", "transparency"} & image.info.keys():
        return _pillow_png(image, text, compress_level)
    channels = len(image.mode)
    rows = np.frombuffer(image.tobytes(), np.uint8).reshape(height, width * channels)
    band = max(64, math.ceil(height / 16))
    starts = range(0, height, band)
    last = starts[-1]

    def encode_band(start: int) -> tuple[bytes, int, int]:
        """The band's IDAT chunks (the first band's stream opens with the zlib header), its adler32, its size."""
        deflate, comp = _raw_deflater(compress_level)
        parts, adler, size = [zlib.compress(b"", compress_level)[:2] if start == 0 else b""], 1, 0
        stop, block = min(start + band, height), max(1, BLOCK_BYTES // rows.shape[1])
        filt = _Filter(min(block, stop - start), rows.shape[1], channels)
        for i in range(start, stop, block):
            data = filt(rows[i:min(i + block, stop)], rows[i - 1] if i else None)
            adler, size = zlib.adler32(data, adler), size + data.nbytes
            parts.append(comp.compress(data))
        parts.append(comp.flush(deflate.Z_FINISH if start == last else deflate.Z_SYNC_FLUSH))
        stream = memoryview(b"".join(parts))
        return b"".join(_chunk(b"IDAT", stream[i:i + IDAT_MAX]) for i in range(0, len(stream), IDAT_MAX)), adler, size

    workers = min(len(starts), workers if workers is not None else min(8, os.cpu_count() or 1))
    if workers == 1:
        bands = [encode_band(s) for s in starts]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="png") as pool:
            bands = list(pool.map(encode_band, starts))
    adler = 1
    for _, band_adler, size in bands:
        adler = _adler32_combine(adler, band_adler, size)
    return b"".join([
        SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPE[image.mode], 0, 0, 0)),
        *(_chunk(b"iTXt", _itxt(key, value)) for key, value in text.items()),
        *(idat for idat, _, _ in bands),
        _chunk(b"IDAT", struct.pack(">I", adler)),  # the stream's end: IDAT boundaries are free in PNG
        _chunk(b"IEND", b""),
    ])


def _raw_deflater(level: int):
    """(module, compressor) of one band's raw deflate stream: ISA-L for level 1 (the fastest), else zlib with
    Pillow's settings. Either stream ends with the module's own flush constants."""
    if level == 1:
        return isal_zlib, isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    return zlib, zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)  # as Pillow's encoder


class _Filter:
    """PNG row filtering, libpng's adaptive heuristic vectorised over blocks of up to ``n`` rows: per row the
    filter (None, Sub, Up, Average, Paeth) whose bytes, taken as int8, have the least sum of magnitudes.
    Every filter reads the ORIGINAL left / up / upper-left bytes, so all rows of a block are computed at
    once. The scratch arrays are reused from block to block: fresh ones cost more in page faults than the
    arithmetic, and every step writes in place for the same reason."""

    def __init__(self, n: int, stride: int, bpp: int) -> None:
        u8 = (n, stride)
        self.bpp = bpp
        self.up, self.left, self.upleft, self.t1, self.t2 = (np.zeros(u8, np.uint8) for _ in range(5))
        self.a, self.b, self.c = (np.empty(u8, np.int16) for _ in range(3))
        self.m1, self.m2 = np.empty(u8, bool), np.empty(u8, bool)
        self.cand, self.mag = np.empty((5, *u8), np.uint8), np.empty((5, *u8), np.uint8)
        self.out = np.empty((n, stride + 1), np.uint8)
        self.sum_dtype = np.uint32 if stride < 1 << 24 else np.uint64  # a row's cost is at most 128 * stride

    def __call__(self, rows: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """``rows`` filtered, each prefixed by its filter type (a view of scratch: use it before the next call);
        ``prev`` is the row above the first (None at the top of the image: all zero, as the spec says)."""
        n, bpp = len(rows), self.bpp
        x, up, left, upleft = rows, self.up[:n], self.left[:n], self.upleft[:n]  # x, b, a, c in the spec
        t1, t2, a, b, c, m1, m2 = (v[:n] for v in (self.t1, self.t2, self.a, self.b, self.c, self.m1, self.m2))
        cand, mag = self.cand[:, :n], self.mag[:, :n]
        up[0] = 0 if prev is None else prev
        up[1:] = x[:-1]
        left[:, bpp:] = x[:, :-bpp]  # the first bpp columns stay 0
        upleft[:, bpp:] = up[:, :-bpp]

        cand[0] = x  # uint8 arithmetic wraps mod 256, as PNG filters do
        np.subtract(x, left, out=cand[1])
        np.subtract(x, up, out=cand[2])
        np.bitwise_and(left, up, out=t1)  # floor((a + b) / 2) = (a & b) + ((a ^ b) >> 1), without overflow
        np.bitwise_xor(left, up, out=t2)
        np.right_shift(t2, 1, out=t2)
        np.add(t1, t2, out=t1)
        np.subtract(x, t1, out=cand[3])
        # Paeth: p = a + b - c; pa = |p - a| = |b - c|, pb = |a - c|, pc = |a + b - 2c| (int16)
        np.copyto(a, left)
        np.copyto(b, up)
        np.copyto(c, upleft)
        np.subtract(b, c, out=b)
        np.subtract(a, c, out=a)
        np.add(a, b, out=c)
        pa, pb, pc = np.abs(b, out=b), np.abs(a, out=a), np.abs(c, out=c)
        # predictor = a if pa <= pb and pa <= pc, else b if pb <= pc, else c; chosen with 0x00 / 0xFF masks
        # (np.where branches per byte and is ~50x slower on noisy rows)
        np.less_equal(pb, pc, out=m1)
        np.negative(m1.view(np.uint8), out=t1)
        np.bitwise_xor(upleft, up, out=t2)
        np.bitwise_and(t2, t1, out=t2)
        np.bitwise_xor(t2, upleft, out=t2)  # b if pb <= pc else c
        np.less_equal(pa, pb, out=m1)
        np.less_equal(pa, pc, out=m2)
        np.logical_and(m1, m2, out=m1)
        np.negative(m1.view(np.uint8), out=t1)
        np.bitwise_xor(t2, left, out=cand[4])
        np.bitwise_and(cand[4], t1, out=cand[4])
        np.bitwise_xor(cand[4], t2, out=t2)
        np.subtract(x, t2, out=cand[4])

        np.negative(cand, out=mag)
        np.minimum(cand, mag, out=mag)  # |v as int8| = min(v, 256 - v)
        choice = mag.sum(axis=2, dtype=self.sum_dtype).argmin(axis=0)  # ties: the earlier filter, as libpng
        out = self.out[:n]
        out[:, 0] = choice
        for row, kind in enumerate(choice.tolist()):
            out[row, 1:] = cand[kind, row]
        return out


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """adler32 of A + B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine, absent from Python)."""
    a1, b1, a2, b2 = adler1 & 0xFFFF, adler1 >> 16, adler2 & 0xFFFF, adler2 >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + len2 * (a1 - 1)) % _ADLER_BASE
    return b << 16 | a


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))])


def _itxt(key: str, value: str) -> bytes:
    """An uncompressed iTXt with empty language tag and translated keyword, byte for byte as ``add_itxt``."""
    return key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")


def _check_key(key: str) -> None:
    """A PNG text keyword: 1-79 printable Latin-1 characters, no leading, trailing or double spaces."""
    ok = (isinstance(key, str) and 1 <= len(key) <= 79 and key == key.strip(" ") and "  " not in key
          and all(32 <= ord(ch) <= 126 or 161 <= ord(ch) <= 255 for ch in key))
    if not ok:
        raise ValueError(f"PNG text key {key!r} is not valid: a keyword is 1-79 printable Latin-1 characters "
                         "with no leading, trailing or consecutive spaces")


def _pillow_png(image: Image.Image, text: dict[str, str], compress_level: int) -> bytes:
    """Pillow's PNG of ``image`` with the same text chunks: the modes (and info) not written here."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()

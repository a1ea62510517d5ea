"""The parallel PNG encoder (``workbench/record/png_encode.py``): lossless in every mode and size, one valid
zlib stream across the bands, libpng's filter choice, bytes independent of the thread count, text chunks
as Pillow writes them, and Pillow's own writer for the modes it does not handle."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from workbench.record import png_encode
from workbench.record.png import PNG_KEY, png_bytes, read_png_record, save_png
from workbench.record.png_encode import encode_png

ASSET = Path(__file__).resolve().parents[1] / "workbench" / "assets" / "sample_reference.png"
PROMPT = "un renard roux sous la neige, été 狐狸在雪中"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """[(type, payload)] of a PNG, checking the signature, every length and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    assert pos == len(data) and out[0][0] == b"IHDR" and out[-1] == (b"IEND", b"")
    return out


def _filtered(data: bytes) -> np.ndarray:
    """The filtered scanlines (filter byte first) of an 8-bit PNG: its IDAT payloads as one zlib stream
    (zlib.decompress checks the adler32 at its end)."""
    chunks = _chunks(data)
    width, height, _, color = struct.unpack(">IIBB", chunks[0][1][:10])
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    return np.frombuffer(raw, np.uint8).reshape(height, 1 + width * {0: 1, 4: 2, 2: 3, 6: 4}[color])


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _pillow(image: Image.Image, level: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _natural(size: int = 1500) -> Image.Image:
    """The sample photo tiled to ``size`` x ``size``: many bands, natural rows."""
    a = np.asarray(Image.open(ASSET).convert("RGB"))
    reps = (-(-size // a.shape[0]), -(-size // a.shape[1]), 1)
    return Image.fromarray(np.ascontiguousarray(np.tile(a, reps)[:size, :size]))


def _synthetic(mode: str, width: int, height: int) -> Image.Image:
    """Smooth gradients, noise and flat runs: every filter has rows to win."""
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[:height, :width]
    base = (x * 3 + y * 5) % 256
    arr = np.stack([(base + 40 * c + rng.integers(0, 3, base.shape)) % 256 for c in range(len(mode))], -1)
    arr[height // 3: height // 2] = 77
    arr[:, width // 2:] ^= rng.integers(0, 256, (height, width - width // 2, len(mode))) * (y[:, width // 2:, None] % 7 == 0)
    arr = arr.astype(np.uint8)
    return Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)


def _reference_filter_types(rows: np.ndarray, bpp: int) -> list[int]:
    """libpng's heuristic written out row by row with Python ints: per row, the filter with the least sum of
    |filtered byte as int8| (ties to the earlier filter)."""
    out, prev = [], np.zeros(rows.shape[1], int)
    for row in rows.astype(int):
        left = np.concatenate([np.zeros(bpp, int), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        cands = [row, row - left, row - prev, row - (left + prev) // 2, row - paeth]
        costs = [int(np.minimum(c % 256, 256 - c % 256).sum()) for c in cands]
        out.append(costs.index(min(costs)))
        prev = row
    return out


TALL = (9, 1100)  # 1100 rows: 16 bands of 69 rows (and a short last one)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (17, 5), (513, 131), TALL])
def test_every_mode_and_size_round_trips_exactly(mode, size):
    image = _synthetic(mode, *size)
    back = _decode(encode_png(image))
    assert back.mode == mode and back.size == size
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_filters_are_chosen_as_libpng_chooses_them_across_bands():
    image = _synthetic("RGB", 40, 200)  # bands of 64 rows: the first row of a band filters against the band above
    filtered = _filtered(encode_png(image))
    rows = np.asarray(image).reshape(200, -1)
    assert filtered[:, 0].tolist() == _reference_filter_types(rows, 3)


def test_each_filter_wins_the_row_made_for_it():
    width, rng = 64, np.random.default_rng(3)
    rows = [np.zeros(width, int), rng.integers(0, 256, width)]  # zeros: None (all filters tie at 0)
    rows.append(rows[-1].copy())  # a repeated row: Up
    rows.append(rng.integers(0, 256, width))
    rows.append((np.arange(width) * 5 + 11) % 256)  # a ramp under noise: Sub
    rows.append(rng.integers(0, 256, width))
    avg = []
    for i in range(width):  # the Average predictor reproduces this row exactly (cost 0) under the noisy row
        avg.append(((avg[-1] if i else 0) + int(rows[-1][i])) // 2)
    rows.append(np.array(avg))
    steps = np.repeat([0, 120, 0, 150, 30, 200, 80, 200], 8)  # flat runs with jumps of 120 or more
    rows += [steps, steps + 50]  # Paeth predicts left inside a run, up at a jump: residual 0, then 50 per jump
    image = Image.fromarray(np.array(rows, np.uint8), "L")
    data = encode_png(image)
    kinds = _filtered(data)[:, 0].tolist()
    assert [kinds[i] for i in (0, 2, 4, 6, 8)] == [0, 2, 1, 3, 4]
    assert kinds == _reference_filter_types(np.array(rows, np.uint8), 1)
    assert np.array_equal(np.asarray(_decode(data)), np.asarray(image))


def test_natural_image_round_trips_and_is_about_pillows_size():
    image = _natural()
    for level in (1, 6):
        data = encode_png(image, compress_level=level)
        assert np.array_equal(np.asarray(_decode(data)), np.asarray(image))
        # measured (Pillow 13, zlib, this tiled 1500x1500 photo): 1.040x Pillow's bytes at level 6 (each band
        # starts a fresh deflate window); level 1 deflates with ISA-L, smaller than zlib's level 1
        low, high = (0.7, 1.0) if level == 1 else (0.9, 1.1)
        assert low < len(data) / len(_pillow(image, level)) < high, level
    kinds = set(_filtered(data)[:, 0].tolist())
    assert kinds <= {0, 1, 2, 3, 4} and len(kinds) > 1


def test_bytes_do_not_depend_on_the_number_of_threads():
    image = _natural(700)
    one = encode_png(image, compress_level=1, workers=1)
    assert encode_png(image, compress_level=1, workers=2) == one
    assert encode_png(image, compress_level=1, workers=5) == one
    assert encode_png(image, compress_level=1) == one
    with pytest.raises(ValueError, match="workers"):
        encode_png(image, workers=0)
    with pytest.raises(ValueError, match="compress_level"):
        encode_png(image, compress_level=10)


def test_the_bands_make_one_zlib_stream_in_bounded_idat_chunks():
    image = _natural(1500)
    data = encode_png(image, compress_level=1)
    idats = [p for k, p in _chunks(data) if k == b"IDAT"]
    assert len(idats) > 16 and all(len(p) <= png_encode.IDAT_MAX for p in idats)
    stream = b"".join(idats)
    raw = zlib.decompress(stream)  # one stream: raises on a bad block, a missing end or a wrong adler32
    assert len(raw) == 1500 * (1 + 1500 * 3)
    assert stream[-4:] == struct.pack(">I", zlib.adler32(raw))
    d = zlib.decompressobj()
    assert d.decompress(stream) == raw and d.eof and d.unused_data == b""


def test_adler32_of_the_bands_combines_to_the_whole():
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65521, 100_000, 299_999):
        a, b = data[:cut], data[cut:]
        assert png_encode._adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)


def test_text_reads_back_through_pillow_and_the_record_reader(tmp_path):
    image = _synthetic("RGB", 33, 20)
    data = encode_png(image, {"prompt": PROMPT, "Comment": "two"})
    assert _decode(data).text == {"prompt": PROMPT, "Comment": "two"}
    # the chunk is byte for byte what Pillow's PngInfo.add_itxt writes
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", PROMPT)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    assert [p for k, p in _chunks(buf.getvalue()) if k == b"iTXt"] == [_chunks(data)[1][1]]

    record = {"config": {"prompt": PROMPT}, "image": {"seed": 3}}
    save_png(tmp_path / "r.png", image, record)
    assert read_png_record(tmp_path / "r.png") == record
    assert _decode(png_bytes(image, record)).text[PNG_KEY] == _decode(png_bytes(image, record, 1)).text[PNG_KEY]
    assert b"iTXt" not in [k for k, _ in _chunks(png_bytes(image))]  # no record, no text chunk


@pytest.mark.parametrize("mode", ["P", "I;16", "1"])
def test_modes_not_written_here_go_to_pillow_with_the_text(mode):
    arr = np.arange(40 * 30).reshape(30, 40)
    image = Image.fromarray((arr * 37 % 65536).astype(np.uint16)) if mode == "I;16" else \
        Image.fromarray((arr % 256).astype(np.uint8)).convert(mode)
    data = encode_png(image, {"prompt": PROMPT}, compress_level=1)
    back = _decode(data)
    assert back.mode == mode and back.text == {"prompt": PROMPT}
    assert np.array_equal(np.asarray(back), np.asarray(image))
    if mode == "P":
        assert back.getpalette() == image.getpalette()


def test_an_image_carrying_transparency_keeps_it():
    image = _synthetic("RGB", 20, 10)
    image.info["transparency"] = (77, 77, 77)  # Pillow writes tRNS from info: so does encode_png (through Pillow)
    back = _decode(encode_png(image, {"k": "v"}))
    assert back.info["transparency"] == (77, 77, 77) and back.text == {"k": "v"}


@pytest.mark.parametrize("key", ["", " lead", "trail ", "two  spaces", "x" * 80, "狐狸", "nul\0key", "tab\tkey"])
def test_bad_text_keys_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        encode_png(_synthetic("RGB", 4, 4), {key: "value"})
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        encode_png(Image.new("P", (4, 4)), {key: "value"})  # the Pillow path checks them too


def test_latin1_keys_up_to_79_characters_are_accepted():
    text = {"é" * 79: PROMPT, "a b": "c"}
    assert _decode(encode_png(_synthetic("L", 5, 5), text)).text == text


@pytest.mark.parametrize("kwargs, message", [
    ({"compress_level": 10}, "compress_level must be 0-9 (zlib; -1: its default, 6), got 10"),
    ({"compress_level": -2}, "compress_level must be 0-9 (zlib; -1: its default, 6), got -2"),
    ({"workers": 0}, "workers must be at least 1 (or None: up to 8), got 0"),
])
def test_bad_level_or_thread_count_is_refused_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        encode_png(Image.new("RGB", (4, 4)), **kwargs)

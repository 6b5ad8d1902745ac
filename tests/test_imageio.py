"""Tests for edgead.imageio: colour/bit-depth conversion, unreadable files, and the shared resize + crop."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgead.errors import InputError
from edgead.imageio import list_images, load_batch, prepare, read_image, to_rgb8, write_image
from edgead.spec import DetectorSpec


def _spec(input_size=(32, 32), resize=None) -> DetectorSpec:
    return DetectorSpec(
        family="fbft", backbone="tiny", norm="layernorm", layers=(0,), input_size=input_size, resize=resize
    )


def _png_bytes(array: np.ndarray, colour_type: int) -> bytes:
    """A minimal 8-bit PNG written by hand, for layouts cv2.imwrite cannot produce (gray + alpha)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_gray_png_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_bgr_file_comes_back_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    write_image(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [30, 20, 10]


def test_gray_alpha_png_becomes_gray_rgb(tmp_path: Path) -> None:
    la = np.dstack([np.full((5, 6), 100, np.uint8), np.full((5, 6), 7, np.uint8)])
    (tmp_path / "la.png").write_bytes(_png_bytes(la, colour_type=4))
    out = read_image(tmp_path / "la.png")
    assert out.shape == (5, 6, 3)
    assert np.all(out == 100)


def test_sixteen_bit_is_scaled_with_rounding(tmp_path: Path) -> None:
    g16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = read_image(tmp_path / "g16.png")
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    c16 = np.zeros((2, 2, 3), np.uint16)
    c16[..., 2] = 65535  # red in BGR order
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    assert read_image(tmp_path / "c16.png")[0, 0].tolist() == [255, 0, 0]


def test_float_arrays_in_unit_range_only() -> None:
    out = to_rgb8(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert out[0, :, 0].tolist() == [0, 64, 255]
    with pytest.raises(InputError, match=r"values in \[0, 1\], found range \[0, 2\]"):
        to_rgb8(np.array([[0.0, 2.0]], dtype=np.float32))
    with pytest.raises(InputError, match="8- or 16-bit image, found dtype int32"):
        to_rgb8(np.zeros((2, 2), np.int32))
    with pytest.raises(InputError, match="1, 3 or 4 channels, found 5"):
        to_rgb8(np.zeros((2, 2, 5), np.uint8))


def test_garbage_bytes_are_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match="corrupt or unknown file: .*bad.png"):
        read_image(bad)


def test_png_cut_in_half_is_an_input_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "full.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or unknown file: .*half.png"):
        read_image(tmp_path / "half.png")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file: .*empty.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="found nothing at .*nope.png"):
        read_image(tmp_path / "nope.png")


def test_prepare_resizes_then_center_crops() -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    img[:, 40:] = 255  # right half white
    out = prepare(img, _spec(input_size=(32, 32), resize=(40, 40)))
    assert out.shape == (32, 32, 3) and out.flags["C_CONTIGUOUS"]
    # resized to 40x40 the edge sits at column 20; the crop starts at column 4, so the edge is at 16
    assert np.all(out[:, :16] == 0) and np.all(out[:, 16:] == 255)


def test_prepare_without_resize_uses_input_size() -> None:
    img = np.full((100, 50, 3), 7, np.uint8)
    out = prepare(img, _spec(input_size=(24, 48)))
    assert out.shape == (24, 48, 3)
    assert np.all(out == 7)


def test_prepare_mask_nearest_keeps_binary_values() -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:50] = 1
    out = prepare(mask, _spec(input_size=(32, 32), resize=(48, 48)), nearest=True)
    assert out.shape == (32, 32)
    assert set(np.unique(out).tolist()) == {0, 1}
    # area 20x30 of 64x64 scales to 15x22.5 of 48x48, all inside the 32x32 crop
    assert abs(int(out.sum()) - 15 * 22.5) <= 15


def test_load_batch_and_list_images(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    write_image(tmp_path / "b.png", np.full((40, 40, 3), 9, np.uint8))
    write_image(tmp_path / "a.jpg", np.full((30, 50, 3), 200, np.uint8))
    files = list_images(tmp_path)
    assert [p.name for p in files] == ["a.jpg", "b.png"]
    batch = load_batch(files, _spec(input_size=(16, 16)))
    assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.uint8
    assert abs(int(batch[0].mean()) - 200) <= 2 and int(batch[1].mean()) == 9
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="found none"):
        list_images(tmp_path / "sub")
    with pytest.raises(InputError, match="found no folder"):
        list_images(tmp_path / "missing")


# -- one decode path for files and uploads (issue 25 item 2) ----------------------------------------------------
def _corrupt_scan_jpeg() -> tuple[bytes, int]:
    """A valid 64x64 JPEG with a 0xFF 0x42 marker written into its scan data (OpenCV decodes it anyway)."""
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    data = bytearray(buf.tobytes())
    at = data.find(b"\xff\xda") + 40  # inside the entropy-coded data of the first scan
    data[at : at + 2] = b"\xff\x42"
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    return bytes(data), at


def test_decode_image_refuses_what_read_image_refuses(tmp_path: Path) -> None:
    from edgead.imageio import decode_image

    data, at = _corrupt_scan_jpeg()
    (tmp_path / "scan.jpg").write_bytes(data)
    with pytest.raises(InputError) as from_file:
        read_image(tmp_path / "scan.jpg")
    with pytest.raises(InputError) as from_bytes:
        decode_image(data, "scan.jpg")
    assert str(from_bytes.value) == f"expected valid JPEG scan data, found a corrupt marker 0xFF42 at byte {at}: " \
                                    f"scan.jpg"
    assert str(from_file.value) == str(from_bytes.value).replace("scan.jpg", str(tmp_path / "scan.jpg"))
    with pytest.raises(InputError, match="^expected an image, found an empty file: up.png$"):
        decode_image(b"", "up.png")
    ok, png = cv2.imencode(".png", np.full((5, 7, 3), (10, 20, 30), np.uint8))  # BGR on disk
    np.testing.assert_array_equal(decode_image(png.tobytes(), "ok.png")[0, 0], [30, 20, 10])


def test_decode_image_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    from edgead.imageio import decode_image

    header_only = _png_bytes(np.zeros((1, 1, 3), np.uint8), 2).replace(
        struct.pack(">II", 1, 1), struct.pack(">II", 8000, 8000), 1)  # declares 8000x8000, holds almost nothing
    assert len(header_only) < 100
    with pytest.raises(InputError) as e:
        decode_image(header_only, "big.png", max_pixels=1 << 24, cap_option="--max-upload-mpx")
    assert str(e.value) == ("expected an image of at most 16.8 Mpx, found big.png declaring 8000x8000 (64.0 Mpx; a "
                            "decompression bomb?); raise --max-upload-mpx to allow it")


def test_an_opencv_failure_is_one_line_without_opencvs_source_path(tmp_path: Path) -> None:
    from edgead.imageio import decode_image

    pnm = b"P6\n40000 40000\n255\n" + bytes(100)  # a header edgead does not parse; OpenCV asserts on its size
    with pytest.raises(InputError) as e:
        decode_image(pnm, "huge.ppm")
    assert str(e.value) == "expected a readable image (png, jpg, bmp, tif, webp), found a corrupt or unknown file: " \
                           "huge.ppm"
    (tmp_path / "huge.ppm").write_bytes(pnm)
    with pytest.raises(InputError, match="corrupt or unknown file: .*huge.ppm$"):
        read_image(tmp_path / "huge.ppm")

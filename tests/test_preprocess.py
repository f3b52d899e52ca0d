"""Tests for xray_transfer.preprocess: reading any image mode, letterbox geometry."""
import numpy as np
import pytest
from PIL import Image

from xray_transfer.preprocess import (OUTPUT_SIZE, ImageReadError, letterbox, letterbox_box,
                                      read_image, stretch_paper_literal, to_rgb)

W, H = OUTPUT_SIZE
SHAPES = {"wide": (300, 60), "tall": (60, 300), "square": (120, 120), "landscape_4_3": (400, 300),
          "extreme_wide": (1000, 32), "extreme_tall": (32, 1000), "near_output_ratio": (267, 200)}


def make_image(mode, size, square=None):
    """A black image of ``mode`` and ``size``; white everywhere, or only in a centred square of side ``square``."""
    w, h = size
    a = np.zeros((h, w), dtype=np.uint8)
    if square is None:
        a[:] = 1
    else:
        t, l = (h - square) // 2, (w - square) // 2
        a[t:t + square, l:l + square] = 1
    if mode == "L":
        return Image.fromarray(a * 255, "L")
    if mode == "RGB":
        return Image.fromarray(np.repeat(a[..., None] * 255, 3, axis=2), "RGB")
    if mode == "RGBA":  # white and opaque where a == 1, white but fully transparent elsewhere
        rgba = np.full((h, w, 4), 255, np.uint8)
        rgba[..., 3] = a * 255
        return Image.fromarray(rgba, "RGBA")
    if mode == "I;16":  # one dark pixel so that the image is not constant (constant 16-bit reads as black)
        a16 = a.astype(np.uint16) * 40000 + 1000
        a16[0, 0] = 0
        im = Image.fromarray(a16, "I;16")
        assert im.mode == "I;16"
        return im
    if mode == "P":
        im = Image.fromarray(a * 255, "L").convert("P")
        assert im.mode == "P"
        return im
    raise ValueError(mode)


MODES = ["L", "RGB", "RGBA", "I;16", "P"]


def white_bbox(out):
    """(left, top, right, bottom) of pixels brighter than mid-grey, right/bottom exclusive."""
    bright = np.asarray(out.convert("L")) > 127
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_letterbox_canvas_has_output_ratio_and_centres_image(shape):
    w, h = shape
    cw, ch, left, top = letterbox_box(shape)
    assert cw >= w and ch >= h and (cw == w or ch == h)          # smallest canvas: one side untouched
    assert abs(cw * H - ch * W) <= max(W, H)                      # ratio 266:200 up to one pixel of rounding
    right, bottom = cw - w - left, ch - h - top
    assert min(left, right, top, bottom) >= 0
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1


def test_letterbox_box_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="size must be positive"):
        letterbox_box((10, 10), (0, 200))
    with pytest.raises(ValueError, match="image_size"):
        letterbox_box((0, 10))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_letterbox_output_is_266x200_rgb_with_black_centred_padding(tmp_path, mode, shape):
    path = tmp_path / "x.png"
    make_image(mode, shape).save(path)
    out = letterbox(read_image(path))
    assert out.size == (W, H) and out.mode == "RGB"
    a = np.asarray(out)
    left, top, right, bottom = white_bbox(out)
    # the image content lands in the middle: margins on opposite sides agree within 1 px
    assert abs(left - (W - right)) <= 1 and abs(top - (H - bottom)) <= 1
    # the white content keeps the source's aspect ratio (up to resize rounding)
    w, h = shape
    scale = min(W / w, H / h)
    assert abs((right - left) - w * scale) <= 1.5 and abs((bottom - top) - h * scale) <= 1.5
    # padding a few pixels away from the content (Lanczos support) is exactly black
    pad = np.ones((H, W), bool)
    pad[max(top - 4, 0):bottom + 4, max(left - 4, 0):right + 4] = False
    assert (a[pad] == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_transparent_pixels_and_16bit_range_map_to_black_and_white(tmp_path, mode):
    path = tmp_path / "x.png"
    make_image(mode, (50, 40), square=20).save(path)
    a = np.asarray(read_image(path))
    assert a.shape == (40, 50, 3) and a.dtype == np.uint8
    assert a[0, 0].tolist() == [0, 0, 0] and a[20, 25].tolist() == [255, 255, 255]


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (200, 200)], ids=["wide", "tall", "square"])
def test_letterbox_keeps_a_square_square(shape):
    out = letterbox(make_image("L", shape, square=60))
    left, top, right, bottom = white_bbox(out)
    assert (right - left) / (bottom - top) == pytest.approx(1.0, abs=0.05)


def test_paper_literal_padding_stretches_a_square_by_12_8_percent():
    """Padding to 1:1.5 and resizing to 266x200 stretches vertically by 1.5 / (266/200)."""
    out = stretch_paper_literal(make_image("L", (300, 100), square=60))
    left, top, right, bottom = white_bbox(out)
    assert (bottom - top) / (right - left) == pytest.approx(1.5 * 200 / 266, abs=0.04)


def test_tiny_image_letterboxes_without_error():
    assert letterbox(Image.new("L", (1, 1), 255)).size == (W, H)
    assert letterbox(Image.new("L", (1, 2), 255)).size == (W, H)


def test_letterbox_custom_size_and_fill():
    out = letterbox(Image.new("L", (10, 100), 255), size=(100, 50), fill=(0, 0, 255))
    assert out.size == (100, 50)
    assert np.asarray(out)[25, 0].tolist() == [0, 0, 255]


def test_constant_16bit_image_reads_as_black():
    a = np.full((4, 4), 30000, dtype=np.uint16)
    assert np.asarray(to_rgb(Image.fromarray(a, "I;16"))).max() == 0


def test_16bit_image_is_rescaled_from_its_own_min_and_max():
    a = np.array([[1000, 2000], [3000, 3000]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(a, "I;16")))
    assert rgb[..., 0].tolist() == [[0, 128], [255, 255]]


# ---- unreadable files: the error names the file ----

def _good_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160), dtype=np.uint8), "L").save(path, quality=90)
    return path


def test_truncated_jpeg_raises_image_read_error_naming_file(tmp_path):
    path = _good_jpeg(tmp_path / "cut.jpeg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpeg.*damaged"):
        read_image(path)


def test_zero_byte_file_raises_image_read_error_naming_file(tmp_path):
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpeg.*empty"):
        read_image(path)


def test_non_image_with_jpeg_extension_raises_image_read_error(tmp_path):
    path = tmp_path / "notes.jpeg"
    path.write_text("this is not an X-ray\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpeg.*not a readable image"):
        read_image(path)


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match=r"gone\.png.*not found"):
        read_image(tmp_path / "gone.png")


def test_good_jpeg_reads_as_rgb(tmp_path):
    im = read_image(_good_jpeg(tmp_path / "ok.jpeg"))
    assert im.mode == "RGB" and im.size == (160, 120)

"""Image loading and letterboxing: the paper's "black background, no distortion" rescale.

The paper rescales every X-ray to 200x266 after padding it on black "to a 1:1.5
ratio". A 1:1.5 canvas cannot be resized to 200x266 (a 1:1.33 ratio) without
stretching, so we pad each image, centred on black, to the aspect ratio of the
output itself and then resize: nothing is distorted, which is the paper's stated
intent. The output is 266 pixels wide and 200 high (landscape) because most of the
source X-rays are wider than tall (median width/height 1.1 for the adult COVID-19
images, 1.2 for the pediatric normals, 1.5 for the pediatric pneumonias), so a
landscape canvas needs the least padding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Output size as (width, height), PIL's convention.
OUTPUT_SIZE = (266, 200)
#: The shortest side an X-ray may have, in pixels; smaller images are unreadable (the real ones have 156 or more).
MIN_SIDE = 32
#: File types read as images (any case).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


class ImageReadError(ValueError):
    """An input image could not be read; the message names the file and what to do."""


def read_image(path) -> Image.Image:
    """Read an image file fully and return it as 8-bit RGB.

    Grey-scale, 16-bit, palette and alpha images are converted: 16-bit images are
    rescaled linearly from their own minimum and maximum to 0-255, transparent
    pixels are composited on black (the padding colour).

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated, not an image, smaller than
        :data:`MIN_SIDE` pixels on a side, or larger than Pillow's decompression-bomb
        limit (``PIL.Image.MAX_IMAGE_PIXELS`` times two).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found; check the data folder layout (see the dataset chapter)")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); re-download it or remove it from the collection")
    try:
        with Image.open(path) as im:
            if min(im.size) < MIN_SIDE:
                raise ImageReadError(f"{path}: only {im.size[0]}x{im.size[1]} pixels, too small for an X-ray "
                                     f"(at least {MIN_SIDE} on each side); remove it or use the full image")
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: image too large to read safely ({err}); downscale it (the dataset "
                             "uses 200x266) or remove it") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unknown format); re-download it or remove it") from None
    except (OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: image data is damaged ({err}); re-download it or remove it") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit rescaled, alpha composited on black)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi == lo else (a - lo) * (255.0 / (hi - lo))
        im = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "RGBA", "PA"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(canvas, rgba)
    return im.convert("RGB")


def letterbox(im: Image.Image, size=OUTPUT_SIZE, fill=(0, 0, 0)) -> Image.Image:
    """Pad ``im`` centred on ``fill`` to the aspect ratio of ``size``, then resize to ``size``.

    Parameters
    ----------
    im : PIL.Image.Image
        Any mode; converted with :func:`to_rgb` first.
    size : (int, int), default (266, 200)
        Output (width, height).
    fill : tuple, default black
        Padding colour.

    Examples
    --------
    >>> from PIL import Image
    >>> letterbox(Image.new("L", (100, 100), 255)).size
    (266, 200)
    """
    im = to_rgb(im)
    canvas_w, canvas_h, left, top = letterbox_box(im.size, size)
    canvas = Image.new("RGB", (canvas_w, canvas_h), fill)
    canvas.paste(im, (left, top))
    return canvas.resize(tuple(size), Image.Resampling.LANCZOS)


def letterbox_box(image_size, size=OUTPUT_SIZE) -> tuple[int, int, int, int]:
    """Geometry of :func:`letterbox` before the resize: ``(canvas_w, canvas_h, left, top)``.

    The canvas is the smallest one with the aspect ratio of ``size`` that holds an
    image of ``image_size`` (width, height); the image is pasted at (left, top), so
    the padding on opposite sides differs by at most one pixel.

    Examples
    --------
    >>> letterbox_box((300, 60))  # wide: padded above and below
    (300, 226, 0, 83)
    >>> letterbox_box((60, 300))  # tall: padded left and right
    (399, 300, 169, 0)
    """
    w, h = image_size
    out_w, out_h = size
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {image_size!r}")
    # Smallest canvas with the output's ratio that contains the image.
    if w * out_h >= h * out_w:  # image is relatively wider: pad top and bottom
        canvas_w, canvas_h = w, max(h, round(w * out_h / out_w))
    else:  # relatively taller: pad left and right
        canvas_w, canvas_h = max(w, round(h * out_w / out_h)), h
    return canvas_w, canvas_h, (canvas_w - w) // 2, (canvas_h - h) // 2


def xray_frame(image_size, size=OUTPUT_SIZE) -> tuple[float, float, float, float]:
    """Where the X-ray itself lies in its letterboxed output, as fractions ``(x0, y0, x1, y1)``.

    Everything outside this box is the black band added by :func:`letterbox`.

    >>> [round(v, 3) for v in xray_frame((100, 100))]  # square X-ray, 200x266: bands left and right
    [0.12, 0.0, 0.872, 1.0]
    """
    w, h = image_size
    canvas_w, canvas_h, left, top = letterbox_box(image_size, size)
    return (left / canvas_w, top / canvas_h, (left + w) / canvas_w, (top + h) / canvas_h)


def stretch_paper_literal(im: Image.Image, size=OUTPUT_SIZE, ratio=1.5) -> Image.Image:
    """The paper's text taken literally: pad on black to width:height = ``ratio``, then resize.

    Used only to show, in the dataset chapter, how much that stretches an image
    (a 1.5 canvas squeezed to 266/200 = 1.33 is stretched vertically by 12.8 %).
    """
    im = to_rgb(im)
    w, h = im.size
    canvas_w, canvas_h = (w, max(h, round(w / ratio))) if w >= h * ratio else (round(h * ratio), h)
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
    canvas.paste(im, ((canvas_w - w) // 2, (canvas_h - h) // 2))
    return canvas.resize(size, Image.Resampling.LANCZOS)


#: How an X-ray becomes the network's 266x200 input (``resize``), in words.
RESIZES = {
    "letterbox": "padded on black to the output's aspect ratio, then resized: nothing distorted (the dataset)",
    "stretch": "resized to the output's size directly, stretching the X-ray to fill it (no bands)",
}


def stretch(im: Image.Image, size=OUTPUT_SIZE) -> Image.Image:
    """A plain resize of ``im`` to ``size`` (width, height): the X-ray fills the output, stretched.

    >>> stretch(Image.new("L", (100, 100), 255)).size
    (266, 200)
    """
    return to_rgb(im).resize(tuple(size), Image.Resampling.LANCZOS)


def stretch_letterboxed(pixels: np.ndarray, image_size) -> np.ndarray:
    """The X-ray of one letterboxed image (uint8, H x W x 3), cut from its bands and stretched to fill H x W.

    ``image_size`` is the original X-ray's (width, height), which says where it lies
    (:func:`xray_frame`). This is :func:`stretch` done from the letterboxed dataset, the
    only copy a training machine has: along the padded axis the X-ray keeps the resolution
    it had inside the letterbox, so it is a little softer than a stretch of the original.

    >>> img = np.zeros((200, 266, 3), np.uint8); img[:, 32:234] = 255  # a square X-ray between bands
    >>> int(stretch_letterboxed(img, (100, 100)).min())
    255
    """
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = xray_frame(image_size, (w, h))
    box = (int(round(x0 * w)), int(round(y0 * h)), int(round(x1 * w)), int(round(y1 * h)))
    crop = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).crop(box)
    return np.asarray(crop.resize((w, h), Image.Resampling.LANCZOS))

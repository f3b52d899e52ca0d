"""Occlusion sensitivity (Zeiler & Fergus 2014): where in the image does the model look?

A black patch slides over the image; the drop in the predicted class's probability
at each position is the map. It needs forward passes only, so it runs unchanged on
every Keras backend (Grad-CAM needs backend-specific gradients).
"""
from __future__ import annotations

import numpy as np


def occlusion_map(predict, image: np.ndarray, target: int, patch=32, stride=16, batch_size=64) -> np.ndarray:
    """Probability drop of class ``target`` when each (patch x patch) square is blacked out.

    Parameters
    ----------
    predict : callable
        Maps a uint8 batch (N, H, W, 3) to class probabilities (N, C).
    image : ndarray (H, W, 3) uint8
    target : int
    patch, stride : int
        Square size and step in pixels.

    Returns
    -------
    ndarray (H, W)
        Mean drop over the patches covering each pixel (positive: the region supported the call).
    """
    h, w = image.shape[:2]
    if patch > min(h, w) or stride < 1:
        raise ValueError(f"patch {patch} must fit the image {h}x{w} and stride {stride} be positive")
    base = float(predict(image[None])[0, target])
    ys = list(range(0, h - patch + 1, stride))
    xs = list(range(0, w - patch + 1, stride))
    if ys[-1] != h - patch:
        ys.append(h - patch)
    if xs[-1] != w - patch:
        xs.append(w - patch)
    boxes = [(y, x) for y in ys for x in xs]
    drops = np.empty(len(boxes))
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for i, (y, x) in enumerate(chunk):
            batch[i, y:y + patch, x:x + patch] = 0
        drops[start:start + len(chunk)] = base - np.asarray(predict(batch))[:, target]
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for d, (y, x) in zip(drops, boxes):
        total[y:y + patch, x:x + patch] += d
        count[y:y + patch, x:x + patch] += 1
    return total / np.maximum(count, 1)


def central_mask(shape, keep=0.15, frame=(0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """True in the central region that :func:`xray_transfer.train.hide_lungs` blacks out.

    A rectangle, not a lung segmentation: on a frontal chest X-ray it holds the lungs
    and the mediastinum; the border holds labels and markers. ``frame`` is the X-ray's
    own box in the letterboxed image (:func:`xray_transfer.preprocess.xray_frame`), as
    for ``image_mask="lungs_hidden_in_frame"``; the default is the whole image.
    """
    from .train import hide_lungs

    h, w = shape[:2]
    ones = np.ones((1, h, w, 1), dtype=np.uint8)
    return hide_lungs(ones, keep=keep, frames=[frame])[0, ..., 0] == 0


def share_inside(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the positive saliency that falls inside ``mask``.

    >>> s = np.zeros((4, 4)); s[0, 0] = 3; s[1, 1] = 1
    >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
    >>> share_inside(s, m)
    0.25
    """
    pos = np.clip(saliency, 0, None)
    total = pos.sum()
    return float(pos[mask].sum() / total) if total > 0 else float("nan")

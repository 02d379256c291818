"""The one resize-and-crop of the project, below every stage: build-data writes its images with it, training
prepares images with it and FID shapes its reference images with it, so all three see the same pixels."""

from __future__ import annotations

import cv2
import numpy as np


def square_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (offset (side difference) // 2), then resize to `size` (INTER_AREA down,
    INTER_CUBIC up).

    Cropping first is the same as resizing the short side and then cropping, but resizes fewer pixels.
    """
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)

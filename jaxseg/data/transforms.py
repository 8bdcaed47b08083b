"""Host-side geometric transforms with detectron2's exact numerics.

Two kinds of object, as in detectron2:

* a *transform* (:class:`ResizeTransform`, :class:`FlipTransform`) is deterministic and knows the
  input size, so it can move an image, its masks, boxes and points consistently;
* an *augmentation* (:class:`ResizeShortestEdge`, :class:`RandomFlip`) draws a transform for an
  image size, using a ``numpy.random.Generator`` when it is random (multi-scale training, flips).

Resizing goes through Pillow on uint8, like detectron2's ``ResizeTransform``: "bilinear" there
antialiases when shrinking and works in 8-bit fixed point, so no other resizer gives the same pixels.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST


# ----------------------------------------------------------------------------------------------
# Size rule and the resize itself


def resize_shortest_edge_shape(
    h: int, w: int, short_edge: int, max_size: int = sys.maxsize
) -> tuple[int, int]:
    """Output (height, width) when the short side of an (h, w) image is scaled to ``short_edge``.

    If the long side would then exceed ``max_size`` both sides are scaled down to fit. Sizes are
    rounded half up with ``int(x + 0.5)``, in double precision, as detectron2 does.
    """
    size = float(short_edge)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    longest = max(newh, neww)
    if longest > max_size:
        shrink = max_size * 1.0 / longest
        newh, neww = newh * shrink, neww * shrink
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image: np.ndarray, new_hw: tuple[int, int], interp: int = BILINEAR) -> np.ndarray:
    """Resize a uint8 (H, W), (H, W, 1) or (H, W, C) image to ``new_hw`` with Pillow.

    (H, W, 1) goes through mode "L" and keeps its trailing axis. Channel order is irrelevant
    (Pillow resizes channels independently), except that a 4-channel array is treated as RGBA,
    whose resize weights colour by alpha, exactly as in detectron2.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"resize_image needs a uint8 image, got {image.dtype}")
    newh, neww = int(new_hw[0]), int(new_hw[1])
    single = image.ndim == 3 and image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if single else image)
    out = np.array(pil.resize((neww, newh), interp))
    return out[:, :, None] if single else out


# ----------------------------------------------------------------------------------------------
# Deterministic transforms


def _as_float_array(values: np.ndarray, last_dim: int) -> np.ndarray:
    """A copy of ``values`` shaped (N, last_dim); float inputs keep their dtype, others become float32."""
    array = np.array(values, copy=True)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return array.reshape(-1, last_dim)


@dataclass(frozen=True)
class ResizeTransform:
    """Resize from (h, w) to (new_h, new_w); coordinates are scaled by new/old per axis."""

    h: int
    w: int
    new_h: int
    new_w: int
    interp: int = BILINEAR

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize a uint8 image with ``interp`` (bilinear by default)."""
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"image is {image.shape[:2]}, transform expects {(self.h, self.w)}")
        return resize_image(image, (self.new_h, self.new_w), self.interp)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Resize a uint8/bool (H, W) label or mask map with nearest-neighbour sampling."""
        dtype = segmentation.dtype
        out = resize_image(segmentation.astype(np.uint8), (self.new_h, self.new_w), NEAREST)
        return out.astype(dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Scale (N, 2) x, y points."""
        out = _as_float_array(coords, 2)
        out[:, 0] *= self.new_w * 1.0 / self.w
        out[:, 1] *= self.new_h * 1.0 / self.h
        return out

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Scale (N, 4) XYXY boxes."""
        out = _as_float_array(boxes, 4)
        out[:, 0::2] *= self.new_w * 1.0 / self.w
        out[:, 1::2] *= self.new_h * 1.0 / self.h
        return out


@dataclass(frozen=True)
class FlipTransform:
    """Mirror an (h, w) image left-right and/or top-bottom; ``x -> w - x``, ``y -> h - y``."""

    h: int
    w: int
    horizontal: bool = True
    vertical: bool = False

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Flip an (H, W) or (H, W, C) array (also used for masks)."""
        if self.horizontal:
            image = image[:, ::-1]
        if self.vertical:
            image = image[::-1]
        return np.ascontiguousarray(image)

    apply_segmentation = apply_image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Flip (N, 2) x, y points."""
        out = _as_float_array(coords, 2)
        if self.horizontal:
            out[:, 0] = self.w - out[:, 0]
        if self.vertical:
            out[:, 1] = self.h - out[:, 1]
        return out

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Flip (N, 4) XYXY boxes; the corners swap so x1 <= x2 and y1 <= y2 still hold."""
        out = _as_float_array(boxes, 4)
        if self.horizontal:
            out[:, [0, 2]] = self.w - out[:, [2, 0]]
        if self.vertical:
            out[:, [1, 3]] = self.h - out[:, [3, 1]]
        return out


# ----------------------------------------------------------------------------------------------
# Augmentations: draw a transform for an image size


class ResizeShortestEdge:
    """Scale the short side to a length drawn from ``short_edge_length``, the long side to <= ``max_size``.

    ``sample_style="choice"`` picks one of the listed lengths (detectron2's test time uses a single
    length, e.g. 800, and multi-scale training a list such as (640, ..., 800)); ``"range"`` draws an
    integer uniformly from the closed interval given by the two values. A drawn length of 0 means no
    resize. Random draws need a ``numpy.random.Generator``.
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "choice",
        interp: int = BILINEAR,
    ) -> None:
        lengths = (short_edge_length,) if isinstance(short_edge_length, int) else tuple(short_edge_length)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if not lengths or (sample_style == "range" and len(lengths) != 2):
            raise ValueError(f"bad short_edge_length {short_edge_length!r} for sample_style {sample_style!r}")
        self.short_edge_length = tuple(int(x) for x in lengths)
        self.max_size = max_size
        self.sample_style = sample_style
        self.interp = interp

    @property
    def is_random(self) -> bool:
        """Whether different calls can give different sizes."""
        lengths = self.short_edge_length
        return lengths[0] != lengths[-1] if self.sample_style == "range" else len(set(lengths)) > 1

    def sample_short_edge(self, rng: np.random.Generator | None = None) -> int:
        """The short-side length for one image."""
        if not self.is_random:
            return self.short_edge_length[0]
        if rng is None:
            raise ValueError("multi-scale ResizeShortestEdge needs a numpy Generator (rng=...)")
        if self.sample_style == "range":
            low, high = self.short_edge_length
            return int(rng.integers(low, high + 1))
        return int(rng.choice(self.short_edge_length))

    def get_output_shape(self, h: int, w: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """Output (height, width) for an (h, w) input; (h, w) when the drawn length is 0."""
        short = self.sample_short_edge(rng)
        if short == 0:
            return h, w
        return resize_shortest_edge_shape(h, w, short, self.max_size)

    def get_transform(self, h: int, w: int, rng: np.random.Generator | None = None) -> ResizeTransform:
        """Draw the resize for an (h, w) image."""
        newh, neww = self.get_output_shape(h, w, rng)
        return ResizeTransform(h, w, newh, neww, self.interp)

    def apply_image(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Resize an image (test time: deterministic)."""
        h, w = image.shape[:2]
        return self.get_transform(h, w, rng).apply_image(image)

    def apply_boxes(self, boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Scale XYXY boxes of an ``image_hw`` image; only for a single (non-random) length."""
        if self.is_random:
            raise ValueError("random resize: call get_transform once and use it for image and boxes")
        return self.get_transform(*image_hw).apply_boxes(boxes)


class RandomFlip:
    """Flip with probability ``prob``, horizontally (default) or vertically."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True, vertical: bool = False) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip flips either horizontally or vertically")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.prob = prob
        self.horizontal = horizontal
        self.vertical = vertical

    def get_transform(self, h: int, w: int, rng: np.random.Generator | None = None) -> FlipTransform:
        """Draw the flip for an (h, w) image; the returned transform may be the identity."""
        if self.prob in (0.0, 1.0):
            flip = self.prob == 1.0
        elif rng is None:
            raise ValueError("RandomFlip with 0 < prob < 1 needs a numpy Generator (rng=...)")
        else:
            flip = bool(rng.uniform() < self.prob)
        return FlipTransform(h, w, self.horizontal and flip, self.vertical and flip)


@dataclass(frozen=True)
class TransformList:
    """Transforms applied in order."""

    transforms: tuple

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Apply every transform to an image."""
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Apply every transform to a label/mask map."""
        for t in self.transforms:
            segmentation = t.apply_segmentation(segmentation)
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Apply every transform to (N, 2) points."""
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Apply every transform to (N, 4) XYXY boxes."""
        for t in self.transforms:
            boxes = t.apply_boxes(boxes)
        return boxes


def apply_augmentations(
    augmentations: Sequence[ResizeShortestEdge | RandomFlip],
    image: np.ndarray,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, TransformList]:
    """Draw and apply each augmentation in turn; return the image and the transforms used."""
    transforms = []
    for aug in augmentations:
        t = aug.get_transform(image.shape[0], image.shape[1], rng)
        image = t.apply_image(image)
        transforms.append(t)
    return image, TransformList(tuple(transforms))

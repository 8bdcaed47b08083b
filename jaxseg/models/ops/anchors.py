"""Anchors (detectron2's DefaultAnchorGenerator), computed on the host in numpy.

Feature-map sizes are static, so the anchors are constants of the jitted function. Aspect ratio is
h / w; cell anchors are built in float64 and stored as float32; grid shifts are float32; the flat order
per level is (H, W, A).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(len(sizes) * len(aspect_ratios), 4) XYXY anchors centred on 0, sizes major."""
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ar in aspect_ratios:
            w = math.sqrt(area / ar)
            h = ar * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(out, np.float64).astype(np.float32)


def grid_anchors(cells: np.ndarray, feature_hw: tuple[int, int], stride: int, offset: float = 0.0) -> np.ndarray:
    """(H * W * A, 4) anchors of one level: cell anchors shifted to every feature location."""
    h, w = feature_hw
    shift_x = np.arange(w, dtype=np.float32) * np.float32(stride) + np.float32(offset * stride)
    shift_y = np.arange(h, dtype=np.float32) * np.float32(stride) + np.float32(offset * stride)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shifts + cells.reshape(1, -1, 4)).reshape(-1, 4)


def per_level(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
              num_levels: int) -> list[tuple[Sequence[float], Sequence[float]]]:
    """(sizes, aspect ratios) of each level; a list with one entry is broadcast to all levels."""
    sizes = list(sizes) * num_levels if len(sizes) == 1 else list(sizes)
    aspect_ratios = list(aspect_ratios) * num_levels if len(aspect_ratios) == 1 else list(aspect_ratios)
    if len(sizes) != num_levels or len(aspect_ratios) != num_levels:
        raise ValueError(f"anchor sizes ({len(sizes)}) / aspect ratios ({len(aspect_ratios)}) do not match "
                         f"the {num_levels} feature levels")
    return list(zip(sizes, aspect_ratios))


def multilevel_anchors(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                       strides: Sequence[int], feature_hws: Sequence[tuple[int, int]],
                       offset: float = 0.0) -> list[np.ndarray]:
    """One (H*W*A, 4) array per level."""
    levels = per_level(sizes, aspect_ratios, len(strides))
    return [grid_anchors(cell_anchors(s, a), hw, st, offset) for (s, a), st, hw in zip(levels, strides, feature_hws)]


def num_cell_anchors(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                     num_levels: int) -> int:
    """Anchors per location (must be the same on every level for a shared head)."""
    counts = {len(s) * len(a) for s, a in per_level(sizes, aspect_ratios, num_levels)}
    if len(counts) != 1:
        raise ValueError("every level must have the same number of anchors per location")
    return counts.pop()

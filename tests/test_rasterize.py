"""The device's polygon rasterisation inside boxes equals detectron2's (pycocotools) pixel for pixel."""

import copy

import jax
import numpy as np
import pycocotools.mask as mask_util
import pytest

from jaxseg.data.masks import pack_polygons
from jaxseg.models.ops.rasterize import rasterize_polygons_within_boxes


def reference(polygons: list[np.ndarray], box: np.ndarray, m: int) -> np.ndarray:
    """detectron2's rasterize_polygons_within_box (box float32, polygons float64), written out."""
    w, h = box[2] - box[0], box[3] - box[1]
    polygons = copy.deepcopy([p.reshape(-1) for p in polygons])
    for p in polygons:
        p[0::2] = p[0::2] - box[0]
        p[1::2] = p[1::2] - box[1]
    ratio_h, ratio_w = m / max(h, 0.1), m / max(w, 0.1)
    for p in polygons:
        p[0::2] *= ratio_w
        p[1::2] *= ratio_h
    rle = mask_util.merge(mask_util.frPyObjects([p.tolist() for p in polygons], m, m))
    return mask_util.decode(rle).astype(bool)


def random_instance(rng: np.random.Generator, grid: float | None) -> list[np.ndarray]:
    polys = []
    for _ in range(rng.integers(1, 4)):
        k = rng.integers(3, 12)
        c = rng.uniform(0, 300, 2)
        r = rng.uniform(1, 120)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k)) if rng.random() < 0.7 else rng.uniform(0, 2 * np.pi, k)
        rad = r * rng.uniform(0.2, 1.0, k)
        p = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
        if grid:
            p = np.round(p / grid) * grid * 1.5625  # 0.1 px annotations, resized as in training
        polys.append(p.astype(np.float64))
    return polys


def random_box(rng: np.random.Generator, polys: list[np.ndarray]) -> np.ndarray:
    pts = np.concatenate(polys)
    lo, hi = pts.min(0), pts.max(0)
    kind = rng.integers(0, 5)
    if kind == 0:  # the GT box itself
        box = np.concatenate([lo, hi])
    elif kind == 1:  # a jittered box
        c, s = (lo + hi) / 2, (hi - lo) * np.exp(rng.uniform(-0.5, 0.5, 2))
        c = c + rng.uniform(-0.3, 0.3, 2) * s
        box = np.concatenate([c - s / 2, c + s / 2])
    elif kind == 2:  # a small box inside or across the edge
        c = pts[rng.integers(len(pts))] + rng.uniform(-5, 5, 2)
        s = rng.uniform(0.5, 20, 2)
        box = np.concatenate([c - s / 2, c + s / 2])
    elif kind == 3:  # degenerate: thinner than 0.1
        c = pts[rng.integers(len(pts))]
        box = np.concatenate([c, c + rng.uniform(0.0, 0.12, 2)])
    else:  # integer / exact coordinates
        box = np.round(np.concatenate([lo, hi]) + rng.integers(-3, 4, 4))
    return box.astype(np.float32)


@pytest.mark.parametrize("seed,grid", [(0, 0.1), (1, None), (2, 0.1), (3, 1.0)])
def test_rasterize_matches_pycocotools(seed, grid):
    rng = np.random.default_rng(seed)
    n, m = 300, 28
    instances = [random_instance(rng, grid) for _ in range(n)]
    boxes = np.stack([random_box(rng, p) for p in instances])
    packed = pack_polygons(instances, 36, 4)
    got = np.asarray(jax.jit(rasterize_polygons_within_boxes, static_argnums=4)(
        packed["xy"], packed["polygon"], packed["start"], boxes, m))
    want = np.stack([reference(p, b, m) for p, b in zip(instances, boxes)])
    bad = np.flatnonzero((got != want).any((1, 2)))
    assert not len(bad), f"{len(bad)} of {n} RoIs differ, first {bad[:5]}: {(got != want).sum()} pixels"
    assert want.any((1, 2)).mean() > 0.5  # the draw is not trivially empty


def test_rasterize_other_size_and_padding():
    rng = np.random.default_rng(7)
    instances = [random_instance(rng, 0.1) for _ in range(50)]
    boxes = np.stack([random_box(rng, p) for p in instances])
    packed = pack_polygons(instances, 64, 8)  # more padding than needed
    for m in (14, 33):
        got = np.asarray(rasterize_polygons_within_boxes(packed["xy"], packed["polygon"], packed["start"], boxes, m))
        want = np.stack([reference(p, b, m) for p, b in zip(instances, boxes)])
        assert np.array_equal(got, want)


def test_pack_polygons_refuses_overflow():
    with pytest.raises(ValueError, match="instance 0 has 1 polygons with 5 vertices"):
        pack_polygons([[np.zeros((5, 2))]], 4, 2, where="x")

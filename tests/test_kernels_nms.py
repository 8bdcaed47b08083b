"""nms / batched_nms ("xla") against torchvision and a plain greedy reference."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxseg.errors import UserError
from jaxseg.kernels import batched_nms, nms

nms_module = importlib.import_module("jaxseg.kernels.nms")


def random_boxes(rng, n, extent=300.0, min_size=2.0, max_size=120.0):
    size = rng.uniform(min_size, max_size, (n, 2))
    corner = rng.uniform(-20.0, extent, (n, 2))
    return np.concatenate([corner, corner + size], 1).astype(np.float32)


def clustered_boxes(rng, n, clusters=12):
    """Many heavily overlapping boxes, so that most suppression decisions matter."""
    centres = rng.uniform(50, 250, (clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(20, 60, (n, 2)) * rng.uniform(0.8, 1.2, (n, 1))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def greedy_reference(boxes, scores, threshold, groups=None, valid=None):
    """Plain greedy NMS in float32 with torchvision's predicate; ties: lower index first."""
    n = len(boxes)
    groups = np.zeros(n, int) if groups is None else groups
    valid = np.ones(n, bool) if valid is None else valid
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    for i in order:
        if not valid[i]:
            continue
        ok = True
        for j in kept:
            if groups[i] != groups[j]:
                continue
            iw = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = iw * ih
            if inter / (area[j] + area[i] - inter) > np.float32(threshold):
                ok = False
                break
        if ok:
            kept.append(i)
    return np.array(kept, int)


def kept(result):
    keep, keep_valid = (np.asarray(a) for a in result)
    assert keep.dtype == np.int32 and keep_valid.dtype == bool
    assert np.all(keep[~keep_valid] == 0)  # padding
    assert np.all(np.diff(keep_valid.astype(int)) <= 0)  # real entries first
    return keep[keep_valid]


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    n = [37, 300, 700, 1000][seed]  # one tile, several tiles, N not a multiple of the tile
    boxes = clustered_boxes(rng, n) if seed % 2 else random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(kept(nms(jnp.asarray(boxes), jnp.asarray(scores), threshold)), ref)


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_matches_torchvision(seed):
    rng = np.random.default_rng(100 + seed)
    n = [50, 400, 900][seed]
    boxes = clustered_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    idxs = rng.integers(0, [1, 5, 80][seed], n)
    ref = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.5
    ).numpy()
    out = kept(batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(idxs), 0.5))
    np.testing.assert_array_equal(out, ref)


def test_batched_nms_is_exact_per_group_on_large_coordinates():
    """Far-apart groups of nearly identical boxes at large coordinates: per-group exact NMS."""
    rng = np.random.default_rng(7)
    boxes = clustered_boxes(rng, 200, clusters=3) + np.float32(5000.0)
    scores = rng.random(200).astype(np.float32)
    idxs = rng.integers(0, 80, 200)
    out = kept(batched_nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(idxs), 0.6))
    np.testing.assert_array_equal(out, greedy_reference(boxes, scores, 0.6, groups=idxs))
    per_group = np.concatenate(
        [
            np.nonzero(idxs == g)[0][
                torchvision.ops.nms(
                    torch.from_numpy(boxes[idxs == g]), torch.from_numpy(scores[idxs == g]), 0.6
                ).numpy()
            ]
            for g in np.unique(idxs)
        ]
    )
    assert set(out) == set(per_group)


def test_valid_mask_and_max_output():
    rng = np.random.default_rng(3)
    boxes = clustered_boxes(rng, 500)
    scores = rng.random(500).astype(np.float32)
    valid = rng.random(500) < 0.3
    sub = np.nonzero(valid)[0]
    ref = sub[torchvision.ops.nms(torch.from_numpy(boxes[sub]), torch.from_numpy(scores[sub]), 0.5).numpy()]
    for max_output in (10, 500):
        keep, keep_valid = nms(
            jnp.asarray(boxes), jnp.asarray(scores), 0.5, valid=jnp.asarray(valid), max_output=max_output
        )
        assert keep.shape == (max_output,)
        np.testing.assert_array_equal(kept((keep, keep_valid)), ref[:max_output])


def test_invalid_boxes_never_suppress():
    boxes = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    scores = jnp.array([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.5, valid=jnp.array([False, True, True]))), [1])
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.5, valid=jnp.array([False, False, True]))), [2])
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.5, valid=jnp.zeros(3, bool))), [])


def test_ties_keep_lower_index_first():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 31], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.5, 0.7, 0.7, 0.5], np.float32)
    out = kept(nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5))
    np.testing.assert_array_equal(out, [2, 0, 4])
    # Many random ties: equal to the stable greedy reference.
    rng = np.random.default_rng(5)
    boxes = clustered_boxes(rng, 400)
    scores = rng.integers(0, 6, 400).astype(np.float32) / 5
    np.testing.assert_array_equal(
        kept(nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5)), greedy_reference(boxes, scores, 0.5)
    )


def test_strict_threshold_and_degenerate_boxes():
    # IoU of the first two boxes is exactly 0.5: not suppressed at 0.5, suppressed at 0.49.
    boxes = jnp.array(
        [[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 5.0, 9.0], [9.0, 9.0, 7.0, 7.0]]
    )
    scores = jnp.array([0.9, 0.8, 0.7, 0.6, 0.5])
    ref = torchvision.ops.nms(torch.tensor(np.asarray(boxes)), torch.tensor(np.asarray(scores)), 0.5)
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.5)), ref.numpy())
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.5)), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(kept(nms(boxes, scores, 0.49)), [0, 2, 3, 4])


def test_vmap_over_levels_and_jit():
    rng = np.random.default_rng(11)
    boxes = np.stack([clustered_boxes(rng, 300) for _ in range(5)])
    scores = rng.random((5, 300)).astype(np.float32)
    valid = rng.random((5, 300)) < 0.8
    fn = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, 0.7, valid=v, max_output=200)))
    keep, keep_valid = fn(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid))
    for level in range(5):
        sub = np.nonzero(valid[level])[0]
        ref = sub[
            torchvision.ops.nms(torch.from_numpy(boxes[level][sub]), torch.from_numpy(scores[level][sub]), 0.7).numpy()
        ]
        np.testing.assert_array_equal(kept((keep[level], keep_valid[level])), ref[:200])


def test_empty_input():
    keep, keep_valid = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), 0.5)
    assert keep.shape == (0,) and keep_valid.shape == (0,)
    keep, keep_valid = batched_nms(jnp.zeros((0, 4)), jnp.zeros((0,)), jnp.zeros((0,), jnp.int32), 0.5, max_output=3)
    assert keep.shape == (3,) and not np.any(np.asarray(keep_valid))


def test_implementation_dispatch():
    args = (jnp.array([[0.0, 0.0, 1.0, 1.0]]), jnp.array([1.0]), 0.5)
    np.testing.assert_array_equal(kept(nms(*args, implementation="xla")), [0])
    with pytest.raises(UserError, match=r"nms.*'cuda'.*xla"):
        nms(*args, implementation="cuda")
    with pytest.raises(UserError, match=r"batched_nms.*'nope'.*xla"):
        batched_nms(args[0], args[1], jnp.array([0]), 0.5, implementation="nope")

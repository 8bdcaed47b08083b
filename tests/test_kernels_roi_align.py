"""roi_align ("xla") against torchvision.ops.roi_align and the detectron2 test vectors."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxseg.errors import UserError
from jaxseg.kernels import roi_align

roi_align_module = importlib.import_module("jaxseg.kernels.roi_align")


def tv_roi_align(features, boxes, batch_index, output_size, scale, sampling_ratio, aligned):
    """torchvision on NHWC numpy inputs -> NHWC numpy output."""
    feats = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 3, 1, 2)))
    rois = torch.cat([torch.from_numpy(batch_index.astype(np.float32))[:, None], torch.from_numpy(boxes)], 1)
    out = torchvision.ops.roi_align(feats, rois, output_size, scale, sampling_ratio, aligned)
    return out.permute(0, 2, 3, 1).numpy()


def assert_close_to_torchvision(features, boxes, batch_index, output_size, scale, sampling_ratio, aligned):
    ours = roi_align(
        jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(batch_index), output_size, scale, sampling_ratio, aligned
    )
    ref = tv_roi_align(features, boxes, batch_index, output_size, scale, sampling_ratio, aligned)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-4 * np.abs(features).max())
    return np.asarray(ours)


def random_boxes(rng, n, image_hw, min_size=1.0, max_size=None):
    """Boxes of many sizes and aspect ratios, some partly or fully outside the image."""
    h, w = image_hw
    max_size = max_size or max(h, w)
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), n))
    aspect = np.exp(rng.uniform(-1.5, 1.5, n))
    bw, bh = size * np.sqrt(aspect), size / np.sqrt(aspect)
    cx = rng.uniform(-0.2 * w, 1.2 * w, n)
    cy = rng.uniform(-0.2 * h, 1.2 * h, n)
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32)


def degenerate_boxes():
    return np.array(
        [
            [10.0, 10.0, 10.0, 30.0],  # zero width
            [5.0, 7.0, 25.0, 7.0],  # zero height
            [30.0, 30.0, 10.0, 12.0],  # inverted
            [-80.0, -80.0, -40.0, -30.0],  # fully outside (top left)
            [500.0, 10.0, 600.0, 40.0],  # fully outside (right)
            [-10.0, -10.0, 20.0, 20.0],  # partly outside
            [0.0, 0.0, 0.5, 0.5],  # tiny
            [-4.0, -4.0, 124.0, 96.0],  # edges at -1 and W, H on the feature map at scale 1/4
            [-6.0, 76.8, 158.4, 84.0],  # thin, along the bottom edge
        ],
        np.float32,
    )


# ---------------------------------------------------------------------------------------------
# detectron2 / research test vectors


@pytest.mark.parametrize(
    "aligned, expected",
    [
        (False, [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]),
        (True, [[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0], [12.0, 12.5, 13.0, 13.5]]),
    ],
)
def test_detectron2_vector(aligned, expected):
    feats = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
    out = roi_align(feats, jnp.array([[1.0, 1.0, 3.0, 3.0]]), jnp.array([0]), 4, 1.0, 0, aligned)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], np.array(expected), atol=1e-5)


def test_empty_box_gives_zero_output_and_gradient():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.standard_normal((1, 10, 10, 3)), jnp.float32)
    box = jnp.array([[3.0, 4.0, 5.0, 4.0]])
    f = lambda x: roi_align(x, box, jnp.array([0]), 7, 1.0, 0, True)
    assert np.all(np.asarray(f(feats)) == 0)
    grad = jax.grad(lambda x: f(x).sum())(feats)
    assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_boundary_vector(sampling_ratio):
    """The sample at y = -1.0 is inside (clamped to row 0); y = -2 reads nothing."""
    feats = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    box = jnp.array([[-2.0, -2.0, 2.0, 2.0]])
    out = roi_align(feats, box, jnp.array([0]), 2, 1.0, sampling_ratio, True)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], [[0.0, 0.25], [1.0, 2.5]], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Random and edge cases against torchvision


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_random_boxes_match_torchvision(aligned, sampling_ratio):
    rng = np.random.default_rng(10 + 2 * aligned + sampling_ratio)
    feats = rng.standard_normal((2, 24, 31, 5)).astype(np.float32) * 3
    boxes = np.concatenate([random_boxes(rng, 150, (96, 124), max_size=200), degenerate_boxes()])
    batch_index = rng.integers(0, 2, len(boxes))
    assert len(boxes) > roi_align_module._GROUP  # several groups in the adaptive path
    out = assert_close_to_torchvision(feats, boxes, batch_index, (7, 5), 0.25, sampling_ratio, aligned)
    if aligned and sampling_ratio == 0:
        assert np.all(out[150:155] == 0)  # zero-size, inverted and outside boxes
        assert np.all(np.abs(out[155:]).max(axis=(1, 2, 3)) > 0)


def test_long_thin_box_with_large_adaptive_grid():
    """A 1300 x 20 px box at scale 1/4 samples 47 columns per bin; nothing may be capped."""
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((1, 16, 340, 4)).astype(np.float32)
    boxes = np.array([[10.0, 20.0, 1310.0, 40.0], [20.0, 5.0, 40.0, 60.0], [0.0, 0.0, 8.0, 8.0]], np.float32)
    assert math.ceil((1300 * 0.25) / 7) == 47 > roi_align_module._CHUNK
    assert_close_to_torchvision(feats, boxes, np.zeros(3, int), (7, 6), 0.25, 0, True)


def test_huge_box_mostly_outside():
    """Samples far outside the map are skipped, not looped over; the result still matches."""
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((1, 12, 15, 2)).astype(np.float32)
    boxes = np.array([[-2e4, 3.0, 2e4, 40.0], [-3e3, -3e3, 3e3, 3e3]], np.float32)
    assert_close_to_torchvision(feats, boxes, np.zeros(2, int), 5, 0.25, 0, True)


def test_empty_roi_list():
    out = roi_align(jnp.zeros((1, 10, 10, 3)), jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32), 7, 1.0)
    assert out.shape == (0, 7, 7, 3)


# ---------------------------------------------------------------------------------------------
# Transformations


def test_jit_and_vmap_over_images_with_gradient():
    """vmap over images of the output and of the feature gradient (vjp), against torch."""
    rng = np.random.default_rng(6)
    feats = rng.standard_normal((2, 16, 20, 4)).astype(np.float32)
    boxes = np.stack([random_boxes(rng, 40, (64, 80), max_size=90) for _ in range(2)])
    cot = rng.standard_normal((2, 40, 7, 7, 4)).astype(np.float32)

    @jax.jit
    @jax.vmap
    def per_image(f, b, g):
        out, vjp = jax.vjp(lambda x: roi_align(x[None], b, jnp.zeros(b.shape[0], jnp.int32), 7, 0.25), f)
        return out, vjp(g)[0]

    out, grad = (np.asarray(a) for a in per_image(jnp.asarray(feats), jnp.asarray(boxes), jnp.asarray(cot)))
    for i in range(2):
        feats_t = torch.from_numpy(feats[i : i + 1].transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        rois = torch.cat([torch.zeros(40, 1), torch.from_numpy(boxes[i])], 1)
        out_t = torchvision.ops.roi_align(feats_t, rois, 7, 0.25, 0, True)
        (out_t * torch.from_numpy(cot[i].transpose(0, 3, 1, 2))).sum().backward()
        np.testing.assert_allclose(out[i], out_t.detach().permute(0, 2, 3, 1).numpy(), atol=1e-4 * np.abs(feats).max())
        ref_grad = feats_t.grad.permute(0, 2, 3, 1).numpy()[0]
        np.testing.assert_allclose(grad[i], ref_grad, atol=1e-4 * np.abs(ref_grad).max())


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradient_matches_torch_autograd(sampling_ratio):
    rng = np.random.default_rng(7 + sampling_ratio)
    feats = rng.standard_normal((2, 12, 14, 3)).astype(np.float32)
    boxes = np.concatenate([random_boxes(rng, 45, (48, 56), max_size=120), degenerate_boxes()])
    batch_index = rng.integers(0, 2, len(boxes))
    cot = rng.standard_normal((len(boxes), 4, 4, 3)).astype(np.float32)

    feats_t = torch.from_numpy(feats.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    rois = torch.cat([torch.from_numpy(batch_index.astype(np.float32))[:, None], torch.from_numpy(boxes)], 1)
    out_t = torchvision.ops.roi_align(feats_t, rois, 4, 0.25, sampling_ratio, True)
    (out_t * torch.from_numpy(cot.transpose(0, 3, 1, 2))).sum().backward()
    ref = feats_t.grad.permute(0, 2, 3, 1).numpy()

    def loss(f):
        out = roi_align(f, jnp.asarray(boxes), jnp.asarray(batch_index), 4, 0.25, sampling_ratio, True)
        return jnp.sum(out * cot)

    grad = jax.jit(jax.grad(loss))(jnp.asarray(feats))
    np.testing.assert_allclose(np.asarray(grad), ref, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# Dispatch


def test_implementation_dispatch():
    args = (jnp.ones((1, 4, 4, 1)), jnp.array([[0.0, 0.0, 2.0, 2.0]]), jnp.array([0]), 2, 1.0)
    np.testing.assert_allclose(np.asarray(roi_align(*args, implementation="xla")), np.asarray(roi_align(*args)))
    with pytest.raises(UserError, match=r"roi_align.*'nope'.*xla"):
        roi_align(*args, implementation="nope")

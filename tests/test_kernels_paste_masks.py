"""paste_masks ("xla") against a full-image torch grid_sample(align_corners=False) reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxseg.errors import UserError
from jaxseg.kernels import paste_masks


def torch_paste_values(masks, boxes, image_hw):
    """Samples each mask at every pixel centre of the image, zero outside the mask: (N, H, W)."""
    h, w = image_hw
    masks, boxes = torch.from_numpy(masks), torch.from_numpy(boxes)
    n = masks.shape[0]
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    gy = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1  # (N, H)
    gx = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1  # (N, W)
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)
    out = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].numpy()


def random_case(rng, n, m, image_hw):
    h, w = image_hw
    masks = rng.random((n, m, m)).astype(np.float32)
    masks[: n // 2] = (masks[: n // 2] > 0.5) * 0.9 + 0.05  # blocky masks: long edges near 0.5
    size = rng.uniform(2, 1.2 * max(h, w), (n, 2))
    corner = rng.uniform(-0.3 * w, w, (n, 1)), rng.uniform(-0.3 * h, h, (n, 1))
    corner = np.concatenate(corner, 1)
    boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
    return masks, boxes


def assert_matches_reference(masks, boxes, image_hw, threshold):
    ref = torch_paste_values(masks, boxes, image_hw)
    values = np.asarray(paste_masks(jnp.asarray(masks), jnp.asarray(boxes), image_hw, threshold=None))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, ref, atol=1e-5, rtol=0)
    binary = np.asarray(paste_masks(jnp.asarray(masks), jnp.asarray(boxes), image_hw, threshold=threshold))
    assert binary.dtype == bool and binary.shape == ref.shape
    decided = np.abs(ref - threshold) > 1e-5
    np.testing.assert_array_equal(binary[decided], (ref >= threshold)[decided])
    return binary


def test_research_vector():
    mask = np.array([[[0.2, 0.9], [0.6, 1.0]]], np.float32)
    box = np.array([[0.5, 0.5, 3.5, 3.5]], np.float32)
    values = np.asarray(paste_masks(jnp.asarray(mask), jnp.asarray(box), (4, 5), threshold=None))[0]
    expected = [
        [0.05, 0.158333, 0.391667, 0.225, 0],
        [0.133333, 0.375, 0.808333, 0.458333, 0],
        [0.266667, 0.608333, 0.908333, 0.491667, 0],
        [0.15, 0.333333, 0.466667, 0.25, 0],
    ]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    binary = np.asarray(paste_masks(jnp.asarray(mask), jnp.asarray(box), (4, 5)))[0]
    assert sorted(zip(*np.nonzero(binary))) == [(1, 2), (2, 1), (2, 2)]


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_random_masks_match_grid_sample(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    masks, boxes = random_case(rng, 37, 28, (61, 83))  # 37: not a multiple of the paste step
    binary = assert_matches_reference(masks, boxes, (61, 83), threshold)
    assert 0 < binary.mean() < 0.5


def test_boxes_partly_outside_and_tiny():
    rng = np.random.default_rng(2)
    masks = rng.random((6, 14, 14)).astype(np.float32)
    boxes = np.array(
        [
            [-30, -10, 20, 25],
            [40, 30, 90, 70],
            [-5, -5, 70, 55],
            [10.2, 10.7, 11.1, 11.9],
            [3, 40, 4, 41],
            [25.5, 0.25, 26.0, 49.75],
        ],
        np.float32,
    )
    assert_matches_reference(masks, boxes, (50, 64), 0.5)


def test_degenerate_box_pastes_nothing():
    masks = jnp.ones((2, 4, 4))
    boxes = jnp.array([[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 9.0, 5.0]])
    values = np.asarray(paste_masks(masks, boxes, (12, 12), threshold=None))
    assert np.all(np.isfinite(values)) and np.all(values == 0)
    assert not np.any(np.asarray(paste_masks(masks, boxes, (12, 12))))


def test_jit_and_vmap_over_images():
    rng = np.random.default_rng(4)
    cases = [random_case(rng, 5, 28, (30, 40)) for _ in range(2)]
    masks, boxes = (jnp.asarray(np.stack(a)) for a in zip(*cases))
    out = jax.jit(jax.vmap(lambda m, b: paste_masks(m, b, (30, 40), threshold=None)))(masks, boxes)
    for i, (m, b) in enumerate(cases):
        np.testing.assert_allclose(np.asarray(out[i]), torch_paste_values(m, b, (30, 40)), atol=1e-5)


def test_empty_and_errors():
    out = paste_masks(jnp.zeros((0, 28, 28)), jnp.zeros((0, 4)), (10, 12))
    assert out.shape == (0, 10, 12) and out.dtype == bool
    with pytest.raises(ValueError, match="square"):
        paste_masks(jnp.zeros((1, 28, 14)), jnp.zeros((1, 4)), (10, 12))
    with pytest.raises(UserError, match=r"paste_masks.*'triton'.*xla"):
        paste_masks(jnp.zeros((1, 4, 4)), jnp.zeros((1, 4)), (10, 12), implementation="triton")

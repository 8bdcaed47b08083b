"""EmbedMask's pure functions against torch / numpy references, and its configs."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.config import setup_cfg
from jaxseg.errors import UserError
from jaxseg.models.embedmask.loss import legacy_iou, lovasz_hinge, mask_targets_s4
from jaxseg.models.embedmask.masks import bilinear_matrix, output_masks
from jaxseg.models.registry import build_model

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "EmbedMask")


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 7), (50, 200), (200, 800), (800, 512), (333, 517), (5, 3)])
def test_bilinear_matrix_equals_torch_interpolate(n_in, n_out):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(n_in).normal(size=(n_in, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.T.copy())[None], size=n_out, mode="linear",
                                           align_corners=False)[0].numpy().T
    m = np.asarray(bilinear_matrix(n_out, n_in, n_out + 4, n_in + 2))  # spare slots stay zero
    assert np.all(m[n_out:] == 0) and np.all(m[:, n_in:] == 0)
    # source positions in float32: at index ~400 their rounding (~2e-5 px) shows in the weights
    np.testing.assert_allclose(m[:n_out, :n_in] @ x, want, rtol=1e-4, atol=5e-5)


def test_output_masks_equal_the_two_torch_resizes():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    probs = np.random.default_rng(0).uniform(size=(3, 10, 14)).astype(np.float32)  # stride 4 of a 40x56 input
    resized, original = (37, 50), (61, 83)
    t = f.interpolate(torch.from_numpy(probs)[None], size=(40, 56), mode="bilinear", align_corners=False)
    t = t[:, :, :resized[0], :resized[1]]
    want = (f.interpolate(t, size=original, mode="bilinear", align_corners=False)[0] > 0.5).numpy()
    got = np.asarray(output_masks(jnp.asarray(probs), jnp.array(resized), jnp.array(original), (64, 90)))
    assert not got[:, original[0]:].any() and not got[:, :, original[1]:].any()
    assert (got[:, :original[0], :original[1]] != want).sum() <= 2  # float rounding at the 0.5 threshold


def _lovasz_numpy(logits, labels):
    errors = 1.0 - logits * (2 * labels - 1)
    order = np.argsort(-errors, kind="stable")
    gt = labels[order]
    gts = gt.sum()
    jac = 1.0 - (gts - np.cumsum(gt)) / (gts + np.cumsum(1 - gt))
    jac[1:] = jac[1:] - jac[:-1]
    return float(np.dot(np.maximum(errors[order], 0), jac))


def test_lovasz_hinge_over_a_mask_equals_the_flat_loss_of_its_pixels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=200).astype(np.float32) * 3
    labels = (rng.uniform(size=200) > 0.6).astype(np.float32)
    valid = rng.uniform(size=200) > 0.3
    got = float(lovasz_hinge(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid)))
    assert got == pytest.approx(_lovasz_numpy(logits[valid].astype(np.float64), labels[valid]), rel=1e-5)


def test_legacy_iou_adds_one_to_the_intersection_only():
    iou = float(legacy_iou(jnp.array([0.0, 0, 10, 10]), jnp.array([5.0, 5, 15, 15])))
    assert iou == pytest.approx(36 / (100 + 100 - 36))


def test_mask_targets_are_any_coverage_at_stride_4():
    m = np.zeros((1, 16, 16), np.uint8)
    m[0, 5, 9] = 1  # bilinear x1/4 samples rows/cols 4i+1, 4i+2 with weight 1/2 each
    m[0, 12, 12] = 1  # not sampled
    got = np.asarray(mask_targets_s4(jnp.asarray(m), 4, 4))
    want = np.zeros((1, 4, 4), bool)
    want[0, 1, 2] = True
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["MS_R_50_2x", "MS_R_101_3x", "R_50_1x"])
def test_upstream_configs_build_embedmask(name):
    model = build_model(setup_cfg(os.path.join(CONFIGS, f"{name}.yaml"), []))
    assert type(model).__name__ == "EmbedMask" and model.proposal_generator.embed_dim == 64


def test_resnext_config_is_refused_with_the_key():
    with pytest.raises(UserError, match="NUM_GROUPS"):
        build_model(setup_cfg(os.path.join(CONFIGS, "MS_X_101_2x.yaml"), []))


def test_box_only_fcos_without_mask_on():
    cfg = setup_cfg(os.path.join(CONFIGS, "MS_R_50_2x.yaml"), ["MODEL.MASK_ON", "False"])
    assert type(build_model(cfg)).__name__ == "OneStageDetector"

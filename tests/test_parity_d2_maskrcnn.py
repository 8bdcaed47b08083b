"""Parity with detectron2 Mask R-CNN R50-FPN on tests/data/d2_maskrcnn (seeded random weights, a real photo).

Tolerances are those of the fixture's README: features |a-b| <= 1e-4*std + 1e-4*|a|; >= 99% of the
reference proposals have an IoU > 0.99 partner; instances matched one-to-one by class and box IoU > 0.99,
|score diff| < 1e-4, mask IoU > 0.99.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pycocotools.mask as mask_util
import pytest

from jaxseg.checkpoint.loading import load_weights
from jaxseg.config import setup_cfg
from jaxseg.data.image_io import read_image
from jaxseg.engine.predictor import Predictor
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "d2_maskrcnn")
CONFIG = os.path.join(HERE, "..", "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")
PROBE_BOXES = np.array([[100.3, 150.7, 180.9, 230.2], [400.25, 200.5, 590.75, 370.125],
                        [650.5, 300.25, 1010.0, 660.75], [250.0, 50.0, 1150.0, 780.0]], np.float32)
PROBE_CLASSES = np.array([0, 17, 41, 79], np.int32)
LEVELS = ["p2", "p3", "p4", "p5", "p6"]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(d2_maskrcnn_weights):
    cfg = setup_cfg(CONFIG, [])
    model = build_model(cfg)
    return cfg, model, load_weights(cfg, d2_maskrcnn_weights, model=model)


def _stages(m, images, hw, probe_boxes, probe_classes):
    """Everything the reference records, from one forward pass."""
    feats = m.extract_features(images, hw)
    bottom_up = m.backbone.bottom_up(m.preprocess(images, hw))
    logits, deltas = m.proposal_generator.head_outputs(feats)
    proposals = m.proposal_generator(feats, hw)
    det = m.roi_heads(feats, proposals, hw)
    probe_logits, probe_deltas = m.roi_heads.box_outputs(feats, probe_boxes[None])
    probe_masks = m.roi_heads.mask_outputs(feats, probe_boxes[None], probe_classes[None])
    pooled = m.roi_heads.box_pooler([feats[f] for f in m.roi_heads.in_features], proposals["boxes"][0, :4],
                                    jnp.zeros((4,), jnp.int32))
    return dict(feats=feats, bottom_up=bottom_up, rpn_logits=logits, rpn_deltas=deltas, proposals=proposals,
                det=det, probe_logits=probe_logits[0], probe_deltas=probe_deltas[0], probe_masks=probe_masks[0],
                pooled=pooled)


@pytest.fixture(scope="module")
def out(setup, ref):
    cfg, model, variables = setup
    img = ref["resized_bgr_uint8"]
    h, w = img.shape[:2]
    padded = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
    padded[0, :h, :w] = img
    hw = jnp.array([[h, w]], jnp.int32)
    fn = jax.jit(lambda v, x: model.apply(v, x, hw, jnp.asarray(PROBE_BOXES), jnp.asarray(PROBE_CLASSES),
                                          method=_stages))
    return jax.device_get(fn(variables, padded))


def _nchw(x):  # (1, H, W, C) -> (C, H, W) float64
    return np.asarray(x[0], np.float64).transpose(2, 0, 1)


def _check_map(ref, prefix, ours):
    std = float(ref[prefix + "_std"])
    assert tuple(ref[prefix + "_shape"][1:]) == ours.shape
    y, x = ref[prefix + "_crop_yx"]
    y1, x1 = ref[prefix + "_crop_br_yx"]
    pairs = [(ref[prefix + "_crop"], ours[:8, y:y + 8, x:x + 8]),
             (ref[prefix + "_crop_br"], ours[:8, y1:y1 + 8, x1:x1 + 8]),
             (ref[prefix + "_chan_mean"], ours.mean((1, 2)))]
    for a, b in pairs:
        a = a.astype(np.float64)
        np.testing.assert_array_less(np.abs(a - b), 1e-4 * std + 1e-4 * np.abs(a) + 1e-12, err_msg=prefix)
    assert abs(ours.mean() - float(ref[prefix + "_mean"])) < 1e-4 * std
    assert abs(ours.std(ddof=1) - std) < 1e-4 * std  # torch.std is the unbiased estimate


def test_bottom_up_features(ref, out):
    for k in ["res2", "res3", "res4", "res5"]:
        _check_map(ref, "bottomup_" + k, _nchw(out["bottom_up"][k]))


def test_fpn_features(ref, out):
    for k in LEVELS:
        _check_map(ref, "feat_" + k, _nchw(out["feats"][k]))


def test_rpn_head_outputs(ref, out):
    for i, k in enumerate(LEVELS):
        h, w = out["feats"][k].shape[1:3]
        logits = np.asarray(out["rpn_logits"][i][0]).reshape(h, w, 3).transpose(2, 0, 1)
        deltas = np.asarray(out["rpn_deltas"][i][0]).reshape(h, w, 12).transpose(2, 0, 1)
        _check_map(ref, "rpn_logits_" + k, logits.astype(np.float64))
        _check_map(ref, "rpn_deltas_" + k, deltas.astype(np.float64))


def _iou(a, b):
    xywh = lambda x: np.concatenate([x[:, :2], x[:, 2:] - x[:, :2]], 1).astype(np.float64).tolist()
    return np.asarray(mask_util.iou(xywh(a), xywh(b), [0] * len(b))).reshape(len(a), len(b))


def test_proposals(ref, out):
    p = out["proposals"]
    valid = p["valid"][0]
    ours = p["boxes"][0][valid]
    assert len(ours) == len(ref["proposal_boxes"]) == 1000
    iou = _iou(ref["proposal_boxes"], ours)
    assert (iou.max(1) > 0.99).mean() >= 0.99
    assert (iou[:100].max(1) > 0.99).all()
    # logits of the top proposals agree too (same order up to ties)
    np.testing.assert_allclose(p["logits"][0][:100], ref["proposal_logits"][:100], atol=1e-3, rtol=1e-4)


def test_probe_heads(ref, out):
    np.testing.assert_allclose(out["probe_logits"], ref["probe_box_cls_logits"], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(out["probe_deltas"], ref["probe_box_deltas"], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(out["probe_masks"], ref["probe_mask_probs"], atol=1e-4)


def test_pooled_features_of_first_proposals(ref, out):
    ours = np.asarray(out["pooled"]).transpose(0, 3, 1, 2)
    scale = float(ref["feat_p2_std"])
    np.testing.assert_allclose(ours, ref["box_pooled_first4"], atol=1e-4 * scale, rtol=1e-4)


def test_detections_resized_coords(ref, out):
    det = out["det"]
    valid = det["valid"][0]
    assert valid.sum() == len(ref["det_boxes_resized"])
    iou = _iou(ref["det_boxes_resized"], det["boxes"][0][valid])
    same = ref["inst_classes"][:, None] == det["classes"][0][valid][None, :]
    assert (np.where(same, iou, 0).max(1) > 0.99).all()


def _instances_match(ref, inst):
    na, nb = len(ref["inst_scores"]), len(inst.scores)
    assert na == nb, (na, nb)
    iou = np.where(ref["inst_classes"][:, None] == inst.classes[None, :], _iou(ref["inst_boxes"], inst.boxes), 0)
    j = iou.argmax(1)
    assert len(set(j.tolist())) == na, "instances must match one-to-one"
    assert (iou[np.arange(na), j] > 0.99).all()
    assert np.abs(ref["inst_scores"] - inst.scores[j]).max() < 1e-4
    h, w = map(int, ref["inst_mask_hw"])
    ours = mask_util.encode(np.asfortranarray(inst.masks.transpose(1, 2, 0).astype(np.uint8)))
    for i in range(na):
        theirs = {"size": [h, w], "counts": bytes(ref["inst_mask_rle"][i])}
        assert mask_util.iou([theirs], [ours[j[i]]], [0])[0][0] > 0.99, f"mask {i}"


def test_final_instances_through_predictor(setup, ref):
    cfg, _, variables = setup
    predictor = Predictor(cfg, variables)
    image = read_image(os.path.join(FIXTURE, "image.png"), format="BGR")
    inst = predictor(image)
    assert inst.masks.shape[1:] == tuple(ref["inst_mask_hw"])
    _instances_match(ref, inst)

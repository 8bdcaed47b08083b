"""Training parity with detectron2 Mask R-CNN R50-FPN: one training step on tests/data/d2_maskrcnn/train.

detectron2 itself ran one step of mask_rcnn_R_50_FPN_3x.yaml (seed-1 random weights, the astronaut photo,
gt.json: 6 instances and a crowd region) with every sampling step made deterministic by config (all anchors
and all RoIs sampled); the fixture's README gives the tolerances: losses 1e-5 relative, gradient norms 1e-3
relative, small full gradients ||a - b|| <= 1e-3 ||a||, anchor labels / RoI classes / mask targets exact.
Here the jaxseg loader builds the batch from gt.json, the model computes the same step, and the RoI heads are
fed upstream's training proposals (the README's step 3: no gradient flows through them, and NMS decisions of
another float32 implementation may differ). Scenarios: main, ``jit_`` (120 jittered GT boxes appended to the
proposals: 82 foreground RoIs that are not GT boxes) and ``dflt_`` (the default random sampling).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxseg.checkpoint.detectron2 import path_to_d2_name
from jaxseg.checkpoint.loading import load_weights
from jaxseg.config import setup_cfg
from jaxseg.data.coco import load_coco_json
from jaxseg.data.loaders import build_train_loader
from jaxseg.engine.optim import stop_frozen_gradients
from jaxseg.engine.train import frozen_mask
from jaxseg.models.ops.matcher import match, pairwise_iou
from jaxseg.models.rcnn.roi_heads import label_and_sample_proposals, mask_targets
from jaxseg.models.rcnn.rpn import multilevel_anchors_for
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "d2_maskrcnn")
CONFIG = os.path.join(HERE, "..", "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")
LOSSES = ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"]
NUM_ANCHORS = 159882  # every anchor of the 800x800 input (the README's deterministic config)
INPUT = ["INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice", "INPUT.MAX_SIZE_TRAIN", "1333",
         "INPUT.RANDOM_FLIP", "none", "INPUT.CROP.ENABLED", "False", "INPUT.MASK_FORMAT", "polygon",
         "SOLVER.IMS_PER_BATCH", "1", "DATALOADER.NUM_WORKERS", "0"]


def deterministic(num_candidates: int) -> list[str]:
    return ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", str(NUM_ANCHORS), "MODEL.RPN.POSITIVE_FRACTION", "1.0",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", str(num_candidates), "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0"]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "train", "reference_train.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def batch():
    """The training batch of gt.json as jaxseg's loader builds it (the crowd region dropped)."""
    cfg = setup_cfg(CONFIG, INPUT + deterministic(1006))
    model = build_model(cfg)
    records = load_coco_json(os.path.join(FIXTURE, "train", "gt.json"), FIXTURE)
    loader = build_train_loader(cfg, records, model.input_spec, model.target_spec, seed=0, process_index=0,
                                process_count=1, num_workers=0)
    return loader.load_batch(0)


def test_batch_equals_detectron2_mapper(batch, ref):
    """Image, boxes, classes and the float64 polygons exactly as detectron2's DatasetMapper makes them."""
    inference_ref = np.load(os.path.join(FIXTURE, "reference.npz"))
    h, w = ref["image_size"]
    assert tuple(batch["image_hw"][0]) == (h, w) and batch["images"].shape[1:3] == (800, 800)
    np.testing.assert_array_equal(batch["images"][0, :h, :w], inference_ref["resized_bgr_uint8"])
    g = len(ref["gt_classes"])
    assert batch["gt_valid"][0].sum() == g
    np.testing.assert_array_equal(batch["gt_boxes"][0, :g], ref["gt_boxes"])
    np.testing.assert_array_equal(batch["gt_classes"][0, :g], ref["gt_classes"])
    xy = batch["gt_polygon_xy"][0].view(np.float64)[..., 0]  # (G, S, 2)
    at = 0
    for inst, length in zip(ref["gt_poly_inst"], ref["gt_poly_len"]):
        poly = ref["gt_poly_xy"][at:at + length].reshape(-1, 2)
        at += length
        ids = batch["gt_polygon_id"][0, inst]
        k = [p for p in range(ids.max() + 1) if np.array_equal(xy[inst, ids == p], poly)]
        assert k, f"polygon of instance {inst} not found bit for bit"


def _params_and_model(cfg, weights):
    model = build_model(cfg)
    return model, load_weights(cfg, weights, model=model)


def _fed(proposals: np.ndarray) -> dict[str, jax.Array]:
    return {"boxes": jnp.asarray(proposals)[None], "valid": jnp.ones((1, len(proposals)), bool)}


def _device(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "image_id"}


def _step(model, frozen):
    """Losses and gradients of one training step with the RoI heads fed `proposals` (jitted)."""
    return jax.jit(functools.partial(_step_fn, model, frozen))


def _step_fn(model, frozen, variables, batch, proposals, key):
    def loss_fn(params):
        def forward(m):
            with jax.default_matmul_precision(m.precision):
                k_rpn, k_roi = jax.random.split(key)
                features = m.extract_features(batch["images"], batch["image_hw"])
                rpn, _ = m.proposal_generator.losses(k_rpn, features, batch["image_hw"], batch)
                return {**rpn, **m.roi_heads.losses(k_roi, features, proposals, batch)}

        losses = model.apply({**variables, "params": stop_frozen_gradients(params, frozen)}, method=forward)
        return sum(losses.values()), losses

    (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return {**losses, "loss_total": total}, grads


def _grad_table(grads, frozen) -> dict[str, np.ndarray]:
    """detectron2 parameter name -> gradient (PyTorch layout) of every trainable parameter."""
    flat_frozen = flatten_dict(frozen)
    out = {}
    for path, g in flatten_dict(grads).items():
        if flat_frozen[path]:
            continue
        g = np.asarray(g)
        if path[-1] == "kernel":
            g = g.transpose(3, 2, 0, 1) if g.ndim == 4 else g.T
        out[path_to_d2_name(("params", *path))] = g
    return out


def _check_step(ref, prefix: str, losses, grads, frozen, loss_keys=LOSSES + ["loss_total"]):
    for k in loss_keys:
        np.testing.assert_allclose(float(losses[k]), float(ref[prefix + k]), rtol=1e-5, err_msg=prefix + k)
    table = _grad_table(grads, frozen)
    names = [n.decode() for n in ref[prefix + "grad_norm_names"]]
    assert sorted(table) == sorted(names)  # the same trainable set: stem and res2 frozen (FREEZE_AT 2)
    norms = np.array([np.linalg.norm(table[n].astype(np.float64)) for n in names])
    rel = np.abs(norms - ref[prefix + "grad_norm"]) / ref[prefix + "grad_norm"]
    assert rel.max() <= 1e-3, f"{names[rel.argmax()]}: gradient norm off by {rel.max():.2e}"
    for key in ref:
        if key.startswith(prefix + "grad_") and key not in (prefix + "grad_norm", prefix + "grad_norm_names"):
            name = key[len(prefix + "grad_"):]
            want = ref[key]
            err = np.linalg.norm(table[name] - want) / np.linalg.norm(want)
            assert err <= 1e-3, f"{name}: full gradient off by {err:.2e}"


def _roi_targets(model, batch, proposals, key):
    """The RoI heads' sampling and the mask targets of their foreground RoIs (the functions the losses use)."""
    rh = model.roi_heads
    s = label_and_sample_proposals(
        key, jnp.asarray(proposals), jnp.ones(len(proposals), bool), jnp.asarray(batch["gt_boxes"][0]),
        jnp.asarray(batch["gt_classes"][0]), jnp.asarray(batch["gt_valid"][0]), num_classes=rh.num_classes,
        batch_size_per_image=rh.batch_size_per_image, positive_fraction=rh.positive_fraction,
        iou_thresholds=rh.iou_thresholds, iou_labels=rh.iou_labels)
    fg = np.asarray(s["is_fg"])
    targets = {k: jnp.asarray(v) for k, v in batch.items() if k.startswith("gt_")}
    masks = mask_targets(targets, s["boxes"][None], s["matches"][None], 28)[0]
    return {k: np.asarray(v) for k, v in s.items()}, fg, np.asarray(masks)


def _check_roi_targets(ref, prefix: str, s, fg, masks):
    """The sampled set with its classes, the matched GT of the foreground and every 28x28 target, exact.
    Candidates are the proposals then the GT rows, numbered as in the reference (GT g is len(proposals) + g)."""
    valid = s["valid"]
    ref_index = ref[prefix + "roi_sampled_index"]
    assert valid.sum() == len(ref_index) == int(ref[prefix + "roi_num_candidates"])
    ours = dict(zip(s["index"][valid].tolist(), s["classes"][valid].tolist()))
    assert ours == dict(zip(ref_index.tolist(), ref[prefix + "roi_sampled_classes"].tolist()))
    assert fg.sum() == int(ref[prefix + "roi_num_fg"]) and (~fg & valid).sum() == int(ref[prefix + "roi_num_bg"])
    ref_matched = dict(zip(ref_index.tolist(), ref[prefix + "roi_sampled_matched_gt"].tolist()))
    assert [ref_matched[i] for i in s["index"][fg]] == s["matches"][fg].tolist()
    ref_masks = np.unpackbits(ref[prefix + "mask_targets_packed"], axis=1)[:, :784].reshape(-1, 28, 28)
    ref_fg = ref[prefix + "mask_fg_index"].tolist()
    for idx, ours_mask in zip(s["index"][fg], masks[fg]):
        diff = int((ours_mask != ref_masks[ref_fg.index(idx)]).sum())
        assert diff == 0, f"mask target of candidate {idx}: {diff} pixels differ"


@pytest.mark.parametrize("scenario", ["main", "jit_"])
def test_training_step_equals_detectron2(scenario, batch, ref, d2_maskrcnn_weights):
    prefix = "" if scenario == "main" else scenario
    proposals = ref["proposal_boxes"]
    if prefix == "jit_":
        proposals = np.concatenate([proposals, ref["jit_extra_boxes"]])
    num_candidates = len(proposals) + len(ref["gt_classes"])
    cfg = setup_cfg(CONFIG, INPUT + deterministic(num_candidates))
    model, variables = _params_and_model(cfg, d2_maskrcnn_weights)
    frozen = frozen_mask(model, variables["params"])
    key = jax.random.PRNGKey(0)

    # RPN targets: every anchor labelled as detectron2's matcher (low-quality ties included)
    anchors = np.concatenate(multilevel_anchors_for(model.proposal_generator, [(200, 200), (100, 100), (50, 50),
                                                                               (25, 25), (13, 13)]))
    assert len(anchors) == NUM_ANCHORS
    rpn = model.proposal_generator
    matches, labels = match(pairwise_iou(jnp.asarray(batch["gt_boxes"][0]), jnp.asarray(anchors)),
                            jnp.asarray(batch["gt_valid"][0]), rpn.iou_thresholds, rpn.iou_labels, True)
    np.testing.assert_array_equal(np.asarray(labels), ref["rpn_labels"])
    np.testing.assert_array_equal(np.asarray(matches)[ref["rpn_pos_index"]], ref["rpn_pos_matched_gt"])

    # RoI sampling and mask targets
    s, fg, masks = _roi_targets(model, batch, proposals, key)
    _check_roi_targets(ref, prefix, s, fg, masks)

    # losses and gradients
    losses, grads = _step(model, frozen)(variables, _device(batch), _fed(proposals), key)
    _check_step(ref, prefix, losses, grads, frozen)


def test_default_sampling_losses_within_sampling_spread(batch, ref, d2_maskrcnn_weights):
    """The default config samples 256 anchors (half positive at most) and 512 RoIs (a quarter foreground)
    at random. Every positive anchor (26) and foreground RoI (7) is taken here, so loss_rpn_loc, loss_box_reg
    and loss_mask do not depend on the draw and equal detectron2's (``dflt_``) to 1e-5; loss_rpn_cls and
    loss_cls average a random subset of the negatives, and both detectron2's value and jaxseg's lie within
    4.5 standard deviations of the mean over all such subsets (computed from the per-anchor / per-RoI
    losses of this model)."""
    from jaxseg.models.ops.losses import sigmoid_bce, softmax_ce

    cfg = setup_cfg(CONFIG, INPUT)
    model, variables = _params_and_model(cfg, d2_maskrcnn_weights)
    frozen = frozen_mask(model, variables["params"])
    proposals = ref["proposal_boxes"]
    losses, _ = _step(model, frozen)(variables, _device(batch), _fed(proposals), jax.random.PRNGKey(3))
    for k in ("loss_rpn_loc", "loss_box_reg", "loss_mask"):
        np.testing.assert_allclose(float(losses[k]), float(ref["dflt_" + k]), rtol=1e-5, err_msg=k)

    candidates = np.concatenate([proposals, batch["gt_boxes"][0]])

    @jax.jit
    def per_item(variables, batch):
        def forward(m):
            with jax.default_matmul_precision(m.precision):
                features = m.extract_features(batch["images"], batch["image_hw"])
                logits, _ = m.proposal_generator.head_outputs(features)
                cls, _ = m.roi_heads.box_outputs(features, jnp.asarray(candidates)[None])
                return jnp.concatenate(logits, axis=1)[0], cls[0]

        return model.apply(variables, method=forward)

    rpn_logits, cls_logits = (np.asarray(x, np.float64) for x in per_item(variables, _device(batch)))
    labels = ref["rpn_labels"]
    rpn_bce = np.asarray(sigmoid_bce(jnp.asarray(rpn_logits), jnp.asarray(labels == 1)), np.float64)
    rh = model.roi_heads
    gt_valid = batch["gt_valid"][0]
    iou = pairwise_iou(jnp.asarray(batch["gt_boxes"][0]), jnp.asarray(candidates))
    matched, fg = (np.asarray(x) for x in match(iou, jnp.asarray(gt_valid), rh.iou_thresholds, rh.iou_labels, False))
    fg = fg == 1
    is_candidate = np.concatenate([np.ones(len(proposals), bool), gt_valid])
    cls_of = np.where(fg, batch["gt_classes"][0][matched], rh.num_classes)
    ce = np.asarray(softmax_ce(jnp.asarray(cls_logits), jnp.asarray(cls_of)), np.float64)
    fg, bg = fg & is_candidate, ~fg & is_candidate

    def spread(values_pos, values_neg, k_neg, normalizer):
        n = len(values_neg)
        mean = (values_pos.sum() + k_neg * values_neg.mean()) / normalizer
        std = np.sqrt(k_neg * values_neg.var() * (n - k_neg) / (n - 1)) / normalizer
        return mean, std

    checks = {"loss_rpn_cls": spread(rpn_bce[labels == 1], rpn_bce[labels == 0], 256 - (labels == 1).sum(), 256),
              "loss_cls": spread(ce[fg], ce[bg], 512 - fg.sum(), 512)}
    for k, (mean, std) in checks.items():
        for who, value in (("detectron2", float(ref["dflt_" + k])), ("jaxseg", float(losses[k]))):
            assert abs(value - mean) <= 4.5 * std, f"{who} {k} {value:.6f}: mean {mean:.6f} +- {std:.2e}"
        assert std < 0.1 * mean  # the band is narrow enough to catch a wrong normaliser or sample size

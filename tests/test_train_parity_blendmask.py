"""Training parity with AdelaiDet BlendMask R_50_3x: one training step on tests/data/blendmask_R_50_3x/train.

AdelaiDet ran one step (losses + backward) of R_50_3x.yaml with MIN_SIZE_TRAIN (800,) and no flip (nothing else in
its training path is random) on the astronaut photo with gt.json (5 instances as polygons), seed-1 random weights.
Here jaxseg's loader builds the batch from gt.json (the thing-semantic target included), the model computes the
same step, and the fixture's own `compare()` applies its README's tolerances: targets and positives exact, the 56x56
mask targets and the semantic targets exact, forward values at the positives 2e-4 x (std + |a|), every loss 2e-5
relative, gradient norms 2e-3 (5e-3 for the ResNet), small full gradients, BatchNorm statistics 1e-4.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_module
from flax.traverse_util import flatten_dict

from jaxseg.checkpoint.adelaidet import adelaidet_path_to_name
from jaxseg.checkpoint.loading import load_weights
from jaxseg.config import setup_cfg
from jaxseg.data.coco import load_coco_json
from jaxseg.data.loaders import build_train_loader
from jaxseg.engine.optim import stop_frozen_gradients
from jaxseg.engine.train import frozen_mask
from jaxseg.models.blendmask.blender import pool_bases
from jaxseg.models.fcos.fcos import flatten_levels
from jaxseg.models.fcos.losses import iou_and_giou
from jaxseg.models.fcos.targets import fcos_locations, fcos_targets, level_ranges, location_levels
from jaxseg.models.rcnn.roi_heads import mask_targets
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "blendmask_R_50_3x")
CONFIG = os.path.join(HERE, "..", "configs", "BlendMask", "R_50_3x.yaml")
INPUT = ["INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MAX_SIZE_TRAIN", "1333", "INPUT.HFLIP_TRAIN", "False",
         "SOLVER.IMS_PER_BATCH", "1", "DATALOADER.NUM_WORKERS", "0"]
BN_LAYERS = {"basis_module.refine.0.1": ("basis_module", "refine_0_1"),
             "basis_module.seg_head.1": ("basis_module", "seg_head_1")}

make_train_reference = fixture_module("blendmask_R_50_3x/train", "make_train_reference")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "train", "reference_train.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(blendmask_weights):
    cfg = setup_cfg(CONFIG, INPUT)
    model = build_model(cfg)
    records = load_coco_json(os.path.join(FIXTURE, "train", "gt.json"), FIXTURE)
    loader = build_train_loader(cfg, records, model.input_spec, model.target_spec, seed=0, process_index=0,
                                process_count=1, num_workers=0)
    batch = {k: jnp.asarray(v) for k, v in loader.load_batch(0).items() if k != "image_id"}
    return cfg, model, load_weights(cfg, blendmask_weights["bare"], model=model), batch


def _forward(m, batch):
    """The training forward's intermediate values (basis module in training mode)."""
    features = m.extract_features(batch["images"], batch["image_hw"])
    with jax.default_matmul_precision(m.precision):
        fcos = m.proposal_generator
        head = fcos.head_outputs(features)
        _, assigned = fcos.losses(head, batch)
        basis = m.basis_module(features, train=True)
        attns = flatten_levels([m.top_layer(t) for t in head["bbox_tower"]])
        gt_rois = pool_bases(basis["bases"], batch["gt_boxes"][0], jnp.zeros(batch["gt_boxes"].shape[1], jnp.int32),
                             m.bottom_resolution, m.pooler_sampling_ratio, kernels=m.kernels)
        return dict(logits=flatten_levels(head["logits"]), reg=flatten_levels(head["reg"]),
                    ctr=flatten_levels(head["ctrness"])[..., 0], attns=attns, bases=basis["bases"],
                    seg=basis["seg_logits"], gt_rois=gt_rois, assigned=assigned)


def _losses_and_grads(model, frozen, variables, batch):
    def loss_fn(params):
        v = {**variables, "params": stop_frozen_gradients(params, frozen)}
        losses, updated = model.apply(v, jax.random.PRNGKey(0), batch, method=model.losses, mutable=["batch_stats"])
        return sum(losses.values()), (losses, updated)

    (total, (losses, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return {**losses, "loss_total": total}, grads, updated


@pytest.fixture(scope="module")
def port(setup, ref):
    """The port's numbers under the reference's keys."""
    cfg, model, variables, batch = setup
    fcos = model.proposal_generator
    out, inter = jax.device_get(jax.jit(lambda v, b: model.apply(v, b, method=_forward,
                                                                 mutable=["batch_stats", "intermediates"]))(
        variables, batch))
    frozen = frozen_mask(model, variables["params"])
    losses, grads, updated = jax.device_get(jax.jit(functools.partial(_losses_and_grads, model, frozen))(
        variables, batch))
    d = {k: np.asarray(v) for k, v in losses.items()}
    g = int(batch["gt_valid"][0].sum())
    d["gt_boxes"] = np.asarray(batch["gt_boxes"][0, :g])
    d["gt_classes"] = np.asarray(batch["gt_classes"][0, :g])
    own = jnp.arange(batch["gt_boxes"].shape[1])[None]  # each GT box's own instance
    d["gt_mask_targets_56"] = np.asarray(mask_targets(batch, batch["gt_boxes"], own, 56)[0, :g]).astype(np.uint8)
    d["basis_sem_target"] = np.asarray(batch["gt_thing_semantic"][0])
    for k in ("basis_sem_original", "basis_sem_full"):  # built on the host (tests/test_basis_sem_target.py)
        d[k] = ref[k]

    # targets, recomputed by the pure function the loss uses (same arguments)
    hw = [tuple(int(s) for s in np.ceil(np.array(batch["images"].shape[1:3]) / st)) for st in fcos.strides]
    locs, level = fcos_locations(hw, fcos.strides), location_levels(hw)
    t = jax.device_get(fcos_targets(locs, level, fcos.strides, level_ranges(fcos.sizes_of_interest, len(hw)),
                                    batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"],
                                    num_classes=fcos.num_classes, center_sample=fcos.center_sample,
                                    pos_radius=fcos.pos_radius))
    labels = t["labels"][0]
    pos = np.nonzero(out["assigned"]["positive"][0])[0]
    starts = np.cumsum([0] + [h * w for h, w in hw])
    d["labels_all"] = labels.astype(np.int16)
    d["num_pos_per_level"] = np.array([((pos >= a) & (pos < b)).sum() for a, b in zip(starts[:-1], starts[1:])])
    d["pos_flat_index"], d["pos_level"] = pos, level[pos]
    d["pos_index_in_level"] = pos - starts[level[pos]]
    d["pos_label"], d["pos_gt_index"] = labels[pos], out["assigned"]["gt_index"][0][pos]
    d["pos_location"], d["pos_reg_target"] = locs[pos], t["reg_targets"][0][pos]
    d["pos_ctr_target"] = out["assigned"]["ctr_targets"][0][pos]
    d["num_pos_avg"], d["loss_denorm"] = out["assigned"]["num_pos_avg"], out["assigned"]["loss_denorm"]

    # forward at the positives
    d["pos_logits"], d["pos_reg_pred"] = out["logits"][0][pos], out["reg"][0][pos]
    d["pos_ctr_pred"] = out["ctr"][0][pos]
    iou, giou = jax.device_get(iou_and_giou(jnp.asarray(d["pos_reg_pred"]), jnp.asarray(d["pos_reg_target"])))
    d["pos_iou"], d["pos_giou"] = iou, giou
    from jaxseg.models.blendmask.blender import merge_bases

    rois = jnp.asarray(out["gt_rois"])[d["pos_gt_index"]]
    logits = np.asarray(merge_bases(rois, jnp.asarray(out["attns"][0][pos]), model.attn_size, model.top_interp))
    target = d["gt_mask_targets_56"][d["pos_gt_index"]].astype(np.float64)
    x = logits.astype(np.float64)
    d["pos_mask_bce"] = (np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))).mean((1, 2))
    d["pos_mask_logits_first"] = logits[:4]
    d["gt_rois"] = np.asarray(out["gt_rois"]).transpose(0, 3, 1, 2)[:g]

    def stats(prefix, x, crop_channels):  # (1, H, W, C) -> the reference's statistics of (C, H, W)
        c = np.asarray(x[0], np.float64).transpose(2, 0, 1)
        h, w = c.shape[1:]
        d[prefix + "_mean"], d[prefix + "_std"] = c.mean(), c.std(ddof=1)
        d[prefix + "_chan_mean"], d[prefix + "_chan_std"] = c.mean((1, 2)), c.std((1, 2), ddof=1)
        d[prefix + "_crop"] = c[:crop_channels, h // 3:h // 3 + 8, w // 3:w // 3 + 8]

    stats("bases", out["bases"], 4)
    stats("sem_logits", out["seg"], 8)

    # gradients and BatchNorm statistics
    flat_frozen = flatten_dict(frozen)
    names, norms = [], []
    for path, gr in flatten_dict(grads).items():
        if flat_frozen[path]:
            continue
        gr = np.asarray(gr)
        if path[-1] == "kernel":
            gr = gr.transpose(3, 2, 0, 1)
        name = adelaidet_path_to_name(("params", *path))
        names.append(name)
        norms.append(np.linalg.norm(gr.astype(np.float64)))
        if "grad__" + name in ref:
            d["grad__" + name] = gr
    d["grad_names"], d["grad_norm"] = np.array(names), np.array(norms)
    stats_tree = updated["batch_stats"]
    for layer, path in BN_LAYERS.items():
        node = stats_tree
        for p in path:
            node = node[p]
        for leaf in ("running_mean", "running_var"):
            d[f"bn__{layer}__{leaf}"] = np.asarray(node[leaf])
        node = inter["intermediates"]
        for p in path:
            node = node[p]
        d[f"bn__{layer}__batch_mean"], d[f"bn__{layer}__batch_var"] = node["batch_mean"][0], node["batch_var"][0]
    return d


def _without_counters(ref):
    """jaxseg keeps no num_batches_tracked (torch reads it only with momentum None; these BNs use 0.1)."""
    return {k: v for k, v in ref.items() if not k.endswith("__num_batches_tracked")}


def test_fixture_compare_passes(ref, port):
    report = make_train_reference.compare(_without_counters(ref), port)
    print({k: report[k] for k in ("loss_rel_err", "grad_norm_max_rel_err", "grad_full_max_err_rel_max", "bn_max_err",
                                  "forward_max_err_rel_std", "targets_max_rel_err") if k in report})
    assert report["all_pass"], report.get("failures", report)


def test_losses(ref, port):
    for k in make_train_reference.LOSS_KEYS:
        np.testing.assert_allclose(float(port[k]), float(ref[k]), rtol=2e-5, err_msg=k)


def test_targets_exact(ref, port):
    for k in ("labels_all", "pos_flat_index", "pos_gt_index", "num_pos_per_level", "gt_mask_targets_56",
              "basis_sem_target"):
        np.testing.assert_array_equal(port[k], ref[k], err_msg=k)

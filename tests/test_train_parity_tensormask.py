"""Training parity with detectron2 TensorMask R50-FPN: one training step on tests/data/tensormask_R_50_FPN_1x/train.

detectron2 ran one step (losses + backward) of tensormask_R_50_FPN_1x.yaml without flips (nothing else in its
training path is random) on the astronaut photo with gt.json (6 instances as polygons and a crowd region, which the
mapper drops), seed-1 random weights. Here jaxseg's loader builds the batch, the model computes the same step, and
the fixture's own `compare()` applies its README's tolerances: every anchor label, the foreground anchors, their
matched GT and every mask-target pixel exact; foreground logits, deltas, windows and per-anchor losses 1e-4 x
(std + |a|); the losses 1e-5; gradient norms 5e-4 (2e-3 in the ResNet); small full gradients.
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

from jaxseg.checkpoint.detectron2 import d2_name_to_path, path_to_d2_name
from jaxseg.checkpoint.loading import load_weights
from jaxseg.config import setup_cfg
from jaxseg.data.coco import load_coco_json
from jaxseg.data.loaders import build_train_loader
from jaxseg.engine.optim import stop_frozen_gradients
from jaxseg.engine.train import frozen_mask
from jaxseg.models.registry import build_model
from jaxseg.models.tensormask.targets import assignment, targets
from jaxseg.models.tensormask.tensormask import focal_loss_star, weighted_bce, windows_at

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "tensormask_R_50_FPN_1x")
CONFIG = os.path.join(HERE, "..", "configs", "TensorMask", "tensormask_R_50_FPN_1x.yaml")
INPUT = ["INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice", "INPUT.MAX_SIZE_TRAIN", "1333",
         "INPUT.RANDOM_FLIP", "none", "INPUT.MASK_FORMAT", "polygon", "SOLVER.IMS_PER_BATCH", "1",
         "DATALOADER.NUM_WORKERS", "0", "DATALOADER.MAX_GT_INSTANCES", "8"]

make_train_reference = fixture_module("tensormask_R_50_FPN_1x/train", "make_train_reference")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "train", "reference_train.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(tensormask_weights):
    cfg = setup_cfg(CONFIG, INPUT)
    model = build_model(cfg)
    records = load_coco_json(os.path.join(FIXTURE, "train", "gt.json"), FIXTURE)
    loader = build_train_loader(cfg, records, model.input_spec, model.target_spec, seed=0, process_index=0,
                                process_count=1, num_workers=0)
    batch = {k: jnp.asarray(v) for k, v in loader.load_batch(0).items() if k != "image_id"}
    return cfg, model, load_weights(cfg, tensormask_weights, model=model), batch


def _forward(m, batch):
    features = m.extract_features(batch["images"], batch["image_hw"])
    with jax.default_matmul_precision(m.precision):
        levels = [features[f] for f in m.in_features]
        out = m.head(levels)
        aligned = [[m.head.aligned_masks(f, a) for a in range(len(m.head.mask_sizes))] for f in out["mask_feats"]]
    return {"fpn": levels, "logits": out["logits"], "deltas": out["deltas"], "aligned": aligned}


def _losses_and_grads(model, frozen, variables, batch):
    def loss_fn(params):
        v = {**variables, "params": stop_frozen_gradients(params, frozen)}
        losses = model.apply(v, jax.random.PRNGKey(0), batch, method=model.losses)
        return sum(losses.values()), losses

    (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return {**losses, "loss_total": total}, grads


@pytest.fixture(scope="module")
def port(setup, ref):
    cfg, model, variables, batch = setup
    out = jax.device_get(jax.jit(lambda v, b: model.apply(v, b, method=_forward))(variables, batch))
    frozen = frozen_mask(model, variables["params"])
    losses, grads = jax.device_get(jax.jit(functools.partial(_losses_and_grads, model, frozen))(variables, batch))
    d = {k: np.asarray(v) for k, v in losses.items()}
    g = int(batch["gt_valid"][0].sum())
    x = np.asarray(model.input_spec.normalize(batch["images"], batch["image_hw"]), np.float64)
    d["image_size"] = np.asarray(batch["image_hw"][0])
    d["input_tensor_shape"] = np.array([1, 3, *x.shape[1:3]])
    d["input_tensor_mean"], d["input_tensor_std"] = x.mean(), x.std(ddof=1)
    d["gt_boxes"], d["gt_classes"] = np.asarray(batch["gt_boxes"][0, :g]), np.asarray(batch["gt_classes"][0, :g])
    for k in ("gt_poly_inst", "gt_poly_len", "gt_poly_xy"):  # the loader's polygons: test_polygons_bit_exact
        d[k] = ref[k]

    hw = [tuple(f.shape[1:3]) for f in out["fpn"]]
    num_a = len(model.head.mask_sizes)
    d["fpn_hw"] = np.array(hw)
    d["anchors_per_level"] = np.array([h * w * num_a for h, w in hw])
    fpn = [np.asarray(f[0], np.float64) for f in out["fpn"]]
    d["fpn_mean"], d["fpn_std"] = np.array([f.mean() for f in fpn]), np.array([f.std(ddof=1) for f in fpn])
    anchors, index = model.anchors(hw)
    unit = np.repeat(np.array(model.strides, np.float32), d["anchors_per_level"])
    d["num_anchors"] = np.int64(len(anchors))
    t = jax.device_get(targets(batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"], jnp.asarray(anchors),
                               jnp.asarray(unit), num_classes=80, min_anchor_size=40.0,
                               bbox_reg_weights=model.bbox_reg_weights))
    fg = np.nonzero(t["foreground"][0])[0]
    d["anchor_labels"] = t["labels"][0].astype(np.int8)
    d["num_fg"], d["num_ignored"] = np.int64(len(fg)), np.int64(0)
    d["fg_index"], d["fg_matched_gt"], d["fg_index_lhwa"] = fg, t["matched"][0][fg], index[fg]
    d["fg_anchor_boxes"], d["fg_unit_length"], d["fg_gt_deltas"] = anchors[fg], unit[fg], t["deltas"][0][fg]
    d["nonunique_index"] = _nonunique(batch, anchors, unit)

    logits = np.concatenate([lg[0].reshape(-1, 80) for lg in out["logits"]])
    deltas = np.concatenate([dl[0].reshape(-1, 4) for dl in out["deltas"]])
    d["cls_logits_all_mean"], d["cls_logits_all_std"] = logits.astype(np.float64).mean(), logits.std(ddof=1)
    d["box_deltas_all_mean"], d["box_deltas_all_std"] = deltas.astype(np.float64).mean(), deltas.std(ddof=1)
    d["fg_cls_logits"], d["fg_pred_deltas"] = logits[fg], deltas[fg]
    onehot = np.eye(81, dtype=np.float32)[d["anchor_labels"].astype(np.int64)][:, :80]
    fl = np.asarray(focal_loss_star(jnp.asarray(logits), jnp.asarray(onehot), 0.3, 3.0), np.float64)
    d["cls_loss_sum_pos"], d["cls_loss_sum_neg"] = fl[onehot == 1].sum(), fl[onehot == 0].sum()
    d["fg_cls_loss"] = fl[fg].sum(1)
    d["fg_box_loss"] = np.abs(deltas[fg] - d["fg_gt_deltas"]).astype(np.float64).sum(1)

    sides, windows, masks = [], [], []
    for i, (lvl, h, w, a) in enumerate(d["fg_index_lhwa"]):
        s = model.head.mask_sizes[a]
        win = np.asarray(windows_at(jnp.asarray(out["aligned"][lvl][a][0]), jnp.array([h * hw[lvl][1] + w]),
                                    width=hw[lvl][1], lam=2 ** lvl, size=s))[0]
        target = np.asarray(model.window_targets(batch, jnp.array([[d["fg_matched_gt"][i]]]),
                                                 jnp.asarray(anchors[fg[i]])[None, None], s * 2 ** lvl))[0, 0]
        sides.append(s * 2 ** lvl)
        windows.append(win)
        masks.append(target)
    d["mask_side"] = np.array(sides)
    d["fg_mask_logit_mean"] = np.array([w.astype(np.float64).mean() for w in windows])
    d["fg_mask_logit_std"] = np.array([w.std(ddof=1) for w in windows])
    d["fg_mask_logits_centre8"] = np.stack([w[(s - 8) // 2:(s - 8) // 2 + 8, (s - 8) // 2:(s - 8) // 2 + 8]
                                            for w, s in zip(windows, sides)])
    small = [i for i, s in enumerate(sides) if s <= 30]
    d["mask_logits_small_fg"] = np.array(small)
    d["mask_logits_small_flat"] = np.concatenate([windows[i].reshape(-1) for i in small])
    bce = [np.asarray(weighted_bce(jnp.asarray(w), jnp.asarray(m), 1.5), np.float64).sum() * 2.0 / s ** 2
           for w, m, s in zip(windows, masks, sides)]
    d["fg_mask_loss"] = np.array(bce)
    packed = [np.packbits(m.astype(bool).reshape(-1)) for m in masks]
    d["mask_targets_packed_flat"] = np.concatenate(packed)
    d["mask_targets_offset"] = np.concatenate([[0], np.cumsum([len(p) for p in packed])])

    # gradients by detectron2 name: the reference's names mapped to paths (name -> path is unambiguous; the
    # inverse is not for names such as mask_pred_11)
    flat_frozen = flatten_dict(frozen)
    table = {path: np.asarray(gr) for path, gr in flatten_dict(grads).items() if not flat_frozen[path]}
    theirs = {d2_name_to_path(str(n))[1:]: str(n) for n in ref["grad_names"]}
    names, norms = [], []
    for path, gr in table.items():
        if path[-1] == "kernel":
            gr = gr.transpose(3, 2, 0, 1)
        name = theirs.get(path, path_to_d2_name(("params", *path)))
        names.append(name)
        norms.append(np.linalg.norm(gr.astype(np.float64)))
        if "grad__" + name in ref:
            d["grad__" + name] = gr
    d["grad_names"], d["grad_norm"] = np.array(names), np.array(norms)
    return d


def _nonunique(batch, anchors, unit) -> np.ndarray:
    """Anchors that satisfy the rules for several GTs (labelled background)."""
    g = int(batch["gt_valid"][0].sum())
    counts = np.zeros(len(anchors), np.int64)
    for i in range(g):
        valid = np.zeros(batch["gt_boxes"].shape[1], bool)
        valid[i] = True
        _, fg = assignment(batch["gt_boxes"][0], jnp.asarray(valid), jnp.asarray(anchors), jnp.asarray(unit), 40.0)
        counts += np.asarray(fg)
    return np.nonzero(counts > 1)[0]


def test_polygons_bit_exact(setup, ref):
    """The loader's polygons are detectron2's, bit for bit (so the reference's polygon keys stand for ours)."""
    _, _, _, batch = setup
    xy = np.asarray(batch["gt_polygon_xy"][0]).view(np.float64)[..., 0]  # (G, S, 2)
    at = 0
    for inst, length in zip(ref["gt_poly_inst"], ref["gt_poly_len"]):
        poly = ref["gt_poly_xy"][at:at + length].reshape(-1, 2)
        at += length
        ids = np.asarray(batch["gt_polygon_id"][0, inst])
        assert any(np.array_equal(xy[inst, ids == p], poly) for p in range(ids.max() + 1)), inst


def test_fixture_compare_passes(ref, port):
    report = make_train_reference.compare(ref, port)
    print({k: v for k, v in report.items() if k not in ("failures",)})
    assert report["all_pass"], report.get("failures", report)

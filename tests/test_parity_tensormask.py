"""Parity with detectron2 TensorMask R50-FPN on tests/data/tensormask_R_50_FPN_1x (seeded random weights, a photo).

The fixture's own `compare()` (make_reference.py) applies its README's tolerances: ResNet/FPN features and every
head output (crops, channel means, `_pix` vectors) within 1e-4 of their spread, SwapAlign2Nat outputs (p3 crops
and the natural windows of p2..p5), the candidates above 0.05, and the 28 final instances (boxes, scores, mask
windows before pasting, paste boxes = the scaled anchor boxes, pasted masks).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pycocotools.mask as mask_util
import pytest
from conftest import fixture_module

from jaxseg.checkpoint.loading import load_weights
from jaxseg.config import setup_cfg
from jaxseg.data.image_io import read_image
from jaxseg.engine.predictor import Predictor
from jaxseg.models.ops import box_coder
from jaxseg.models.registry import build_model
from jaxseg.models.tensormask.masks import natural_windows
from jaxseg.models.tensormask.tensormask import PAD_VALUE

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "tensormask_R_50_FPN_1x")
CONFIG = os.path.join(HERE, "..", "configs", "TensorMask", "tensormask_R_50_FPN_1x.yaml")
LEVELS = ["p2", "p3", "p4", "p5", "p6", "p7"]
SIZES = (11, 15)
CROP = 8

make_reference = fixture_module("tensormask_R_50_FPN_1x", "make_reference")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(tensormask_weights):
    cfg = setup_cfg(CONFIG, [])
    model = build_model(cfg)
    return cfg, model, load_weights(cfg, tensormask_weights, model=model)


def _stages(m, images, hw):
    feats = m.extract_features(images, hw)
    bottom_up = m.backbone.bottom_up(m.input_spec.normalize(images, hw))
    with jax.default_matmul_precision(m.precision):
        levels = [feats[f] for f in m.in_features]
        out = m.head(levels)
        towers = [m.head._run(m.head.mask_subnet, x) for x in levels]
        aligned = [[m.head.aligned_masks(f, a) for a in range(len(SIZES))] for f in out["mask_feats"]]
    return dict(bottom_up=bottom_up, feats=feats, out=out, towers=towers, aligned=aligned, det=m(images, hw))


def _windows(aligned, lvl, s, ys, xs):
    """Natural windows (K, side, side) at level-grid locations (K,) of one (level, size)."""
    k, side = len(ys), s * 2 ** lvl
    g = jnp.zeros((k,), jnp.int32)
    return np.asarray(natural_windows(jnp.asarray(aligned)[None], g, jnp.asarray(ys), jnp.asarray(xs),
                                      jnp.full((k,), 2 ** lvl), jnp.full((k,), s), side, PAD_VALUE))


@pytest.fixture(scope="module")
def port(setup, ref):
    cfg, model, variables = setup
    img = ref["resized_bgr_uint8"]
    h, w = img.shape[:2]
    padded = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
    padded[0, :h, :w] = img
    hw = jnp.array([[h, w]], jnp.int32)
    out = jax.device_get(jax.jit(lambda v, x: model.apply(v, x, hw, method=_stages))(variables, padded))
    d = {}

    def entries(prefix, x, pix=False):
        t = np.asarray(x[0], np.float64).transpose(2, 0, 1)
        c, hh, ww = t.shape
        d[prefix + "_shape"] = np.array((1, c, hh, ww))
        d[prefix + "_mean"], d[prefix + "_std"] = t.mean(), t.std(ddof=1)
        d[prefix + "_chan_mean"] = t.mean((1, 2))
        y0, x0 = hh // 3, ww // 3
        y1, x1 = max(hh - CROP, 0), max(ww - CROP, 0)
        d[prefix + "_crop"] = t[:CROP, y0:y0 + CROP, x0:x0 + CROP]
        d[prefix + "_crop_br"] = t[:CROP, y1:y1 + CROP, x1:x1 + CROP]
        if pix:
            d[prefix + "_pix"] = t[:, y0, x0]

    for k in ("res2", "res3", "res4", "res5"):
        entries("bottomup_" + k, out["bottom_up"][k])
    for i, k in enumerate(LEVELS):
        entries("feat_" + k, out["feats"][k])
        entries("cls_logits_" + k, out["out"]["logits"][i], pix=True)
        entries("box_deltas_" + k, out["out"]["deltas"][i], pix=True)
        entries("mask_tower_" + k, out["towers"][i])
        entries("mask_fused_" + k, out["out"]["mask_feats"][i])
        for a, s in enumerate(SIZES):
            entries(f"mask_logits_{k}_s{s}", out["aligned"][i][a], pix=True)

    for a, s in enumerate(SIZES):  # SwapAlign2Nat at p3 (lambda 2): 4x4 locations x all channels
        aligned = out["aligned"][1][a][0]
        for tag in ("", "_tl", "_br"):
            y0, x0 = ref[f"swap_p3_s{s}_crop{tag}_yx"]
            ys, xs = np.meshgrid(np.arange(y0, y0 + 4), np.arange(x0, x0 + 4), indexing="ij")
            win = _windows(aligned, 1, s, ys.reshape(-1), xs.reshape(-1))  # (16, 2S, 2S)
            d[f"swap_p3_s{s}_crop{tag}"] = win.reshape(4, 4, -1).transpose(2, 0, 1)
        for lvl in range(4):
            y0, x0 = ref[f"swap_{LEVELS[lvl]}_s{s}_win_yx"]
            d[f"swap_{LEVELS[lvl]}_s{s}_win"] = _windows(out["aligned"][lvl][a][0], lvl, s, np.array([y0]),
                                                         np.array([x0]))[0].reshape(-1)

    # candidates: every (anchor, class) above the threshold over all levels, decoded from its anchor
    logits = np.concatenate([x[0].reshape(-1, 80) for x in out["out"]["logits"]])
    deltas = np.concatenate([x[0].reshape(-1, 4) for x in out["out"]["deltas"]])
    anchors, _ = model.anchors([x.shape[1:3] for x in out["out"]["logits"]])
    prob = 1 / (1 + np.exp(-logits.astype(np.float64).reshape(-1)))
    flat = np.nonzero(prob > 0.05)[0]
    flat = flat[np.argsort(-prob[flat], kind="stable")]
    anchor = flat // 80
    d["cand_scores"], d["cand_classes"], d["cand_anchor_index"] = prob[flat], flat % 80, anchor
    d["cand_boxes"] = np.asarray(box_coder.apply_deltas(jnp.asarray(deltas[anchor]), jnp.asarray(anchors[anchor]),
                                                        model.bbox_reg_weights))

    det = {k: v[0] for k, v in out["det"].items()}
    valid = det["valid"]
    post = jax.device_get(jax.jit(model.postprocess, static_argnames="canvas_hw")(
        out["det"], hw, jnp.array([[512, 512]], jnp.int32), canvas_hw=(512, 512)))
    keep = post["valid"][0] & valid
    sides = det["mask_side"][keep]
    d["inst_boxes"], d["inst_scores"], d["inst_classes"] = (post[k][0][keep] for k in ("boxes", "scores", "classes"))
    d["inst_index_lhwa"] = det["index"][keep]
    d["inst_paste_boxes"] = det["anchor_boxes"][keep] * 512 / np.array([w, h, w, h])
    d["inst_mask_side"] = sides
    d["inst_mask_offset"] = np.concatenate([[0], np.cumsum(sides.astype(np.int64) ** 2)[:-1]])
    d["inst_mask_probs_flat"] = np.concatenate([m[:s, :s].reshape(-1) for m, s in zip(det["mask_probs"][keep], sides)])
    d["inst_mask_rle"] = np.array([mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
                                   for m in post["masks"][0][keep]], dtype=object)
    d["det_valid_is_prefix"] = bool(valid[:valid.sum()].all())
    return d


def test_fixture_compare_passes(ref, port):
    report = make_reference.compare(ref, port)
    failing = {k: v for k, v in report.items() if k.endswith(("within_tol", "pass")) and v is False}
    print({k: v for k, v in report.items() if "max" in k or "worst" in k or "count" in k})
    assert report["all_pass"], (failing, report)
    assert port["det_valid_is_prefix"] and report["instances_count"] == [28, 28]


def test_predictor_and_cli(tensormask_weights, ref, tmp_path):
    from jaxseg.main import main

    cfg = setup_cfg(CONFIG, ["MODEL.WEIGHTS", tensormask_weights])
    inst = Predictor(cfg)(read_image(os.path.join(FIXTURE, "image.png"), format="BGR"))
    assert len(inst.scores) == 28 and inst.masks.shape[1:] == (512, 512)
    np.testing.assert_allclose(np.sort(inst.scores)[::-1], np.sort(ref["inst_scores"])[::-1], atol=1e-4)
    rc = main(["--config", CONFIG, "--predict", os.path.join(FIXTURE, "image.png"), "--output", str(tmp_path),
               "MODEL.WEIGHTS", tensormask_weights])
    assert rc == 0 and (tmp_path / "coco_instances_results.json").exists()

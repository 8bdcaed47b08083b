"""Parity with AdelaiDet BlendMask R_50_3x on tests/data/blendmask_R_50_3x (seeded random weights, a real photo).

The fixture's own `compare()` (make_reference.py, numpy only) applies its README's tolerances to every recorded
stage: ResNet/FPN features, every FCOS head output, the attentions, the bases, the FCOS decode probes, the
detections' attentions and 56x56 mask probabilities, and the final instances. The tests below also check each
stage on its own, so that a failure names it.
"""

import json
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
from jaxseg.models.fcos.inference import level_candidates
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "blendmask_R_50_3x")
CONFIG = os.path.join(HERE, "..", "configs", "BlendMask", "R_50_3x.yaml")
LEVELS = ["p3", "p4", "p5", "p6", "p7"]
CROP = 8

make_reference = fixture_module("blendmask_R_50_3x", "make_reference")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(blendmask_weights):
    cfg = setup_cfg(CONFIG, [])
    model = build_model(cfg)
    return cfg, model, load_weights(cfg, blendmask_weights["bare"], model=model)


def _stages(m, images, hw):
    """Everything the reference records, from one forward pass (channels last)."""
    feats = m.extract_features(images, hw)
    bottom_up = m.backbone.bottom_up(m.input_spec.normalize(images, hw))
    fcos = m.proposal_generator
    head = fcos.head_outputs(feats)
    raw = [fcos.fcos_head.bbox_pred(t) for t in head["bbox_tower"]]
    top = [m.top_layer(t) for t in head["bbox_tower"]]
    bases = m.basis_module(feats)["bases"]
    return dict(bottom_up=bottom_up, feats=feats, head=head, regraw=raw, top=top, bases=bases,
                det=m(images, hw))


@pytest.fixture(scope="module")
def port(setup, ref):
    """The port's numbers under the reference's npz keys."""
    cfg, model, variables = setup
    img = ref["resized_bgr_uint8"]
    h, w = img.shape[:2]
    padded = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
    padded[0, :h, :w] = img
    hw = jnp.array([[h, w]], jnp.int32)
    out = jax.device_get(jax.jit(lambda v, x: model.apply(v, x, hw, method=_stages))(variables, padded))
    d = {}

    def entries(prefix, x, nch=CROP):  # x (1, H, W, C) -> the reference's statistics of (C, H, W)
        t = np.asarray(x[0], np.float64).transpose(2, 0, 1)
        c, hh, ww = t.shape
        d[prefix + "_shape"] = np.array((1, c, hh, ww))
        d[prefix + "_mean"], d[prefix + "_std"] = t.mean(), t.std(ddof=1)  # torch.std: unbiased
        d[prefix + "_chan_mean"] = t.mean((1, 2))
        (y0, x0), (y1, x1) = make_reference.crop_origin(hh, ww)
        d[prefix + "_crop"] = t[:nch, y0:y0 + CROP, x0:x0 + CROP]
        d[prefix + "_crop_br"] = t[:nch, y1:y1 + CROP, x1:x1 + CROP]

    for k in ("res3", "res4", "res5"):
        entries("bottomup_" + k, out["bottom_up"][k])
    for i, k in enumerate(LEVELS):
        entries("feat_" + k, out["feats"][k])
        entries("head_logits_" + k, out["head"]["logits"][i])
        entries("head_reg_" + k, out["head"]["reg"][i])
        entries("head_regraw_" + k, out["regraw"][i])
        entries("head_ctr_" + k, out["head"]["ctrness"][i])
        entries("head_top_" + k, out["top"][i])
    entries("bases", out["bases"], nch=4)
    d["bases_full"] = np.asarray(out["bases"][0]).transpose(2, 0, 1)

    fcos = model.proposal_generator
    locations = fcos.locations(out["head"])
    cands = {"level": [], "loc": [], "class": [], "score": [], "boxes": []}
    for i, k in enumerate(LEVELS):
        args = [jnp.asarray(out["head"][f][i][0]).reshape(-1, s) for f, s in (("logits", 80), ("reg", 4))]
        ctr = jnp.asarray(out["head"]["ctrness"][i][0]).reshape(-1)
        c = jax.device_get(level_candidates(*args, ctr, jnp.asarray(locations[i]), fcos.strides[i],
                                            threshold=fcos.threshold, topk=fcos.pre_nms_topk,
                                            thresh_with_ctr=fcos.thresh_with_ctr))
        v = c["valid"]
        for key, val in (("level", np.full(v.sum(), i)), ("loc", c["location"][v]), ("class", c["classes"][v]),
                         ("score", c["scores"][v]), ("boxes", c["boxes"][v])):
            cands[key].append(val)
        p = jax.device_get(level_candidates(*args, ctr, jnp.asarray(locations[i]), fcos.strides[i], threshold=-1.0,
                                            topk=20, thresh_with_ctr=True))
        pfx = f"probe_top20_{k}_"
        d[pfx + "loc"], d[pfx + "class"] = p["location"], p["classes"]
        d[pfx + "score"], d[pfx + "boxes"] = p["scores"], p["boxes"]
    for key, val in cands.items():
        d["cand_" + key] = np.concatenate(val)

    det = {k: v[0] for k, v in out["det"].items()}
    valid = det["valid"]
    d["det_valid_is_prefix"] = bool(valid[:valid.sum()].all())
    d["det_boxes_resized"], d["det_scores"] = det["boxes"][valid], det["scores"][valid]
    d["det_classes"], d["det_level"], d["det_loc"] = det["classes"][valid], det["level"][valid], det["location"][valid]
    d["det_top_feat"], d["det_mask_probs"] = det["attns"][valid], det["mask_probs"][valid]

    post = jax.device_get(jax.jit(model.postprocess, static_argnames="canvas_hw")(
        out["det"], hw, jnp.array([[512, 512]], jnp.int32), canvas_hw=(512, 512)))
    keep = post["valid"][0]
    d["inst_boxes"], d["inst_scores"], d["inst_classes"] = (post[k][0][keep] for k in ("boxes", "scores", "classes"))
    d["inst_mask_rle"] = np.array([mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
                                   for m in post["masks"][0][keep]], dtype=object)
    return d


def _check_map(ref, port, prefix):
    s = float(ref[prefix + "_std"])
    assert tuple(ref[prefix + "_shape"]) == tuple(port[prefix + "_shape"]), prefix
    for c in ("_crop", "_crop_br", "_chan_mean"):
        a, b = ref[prefix + c].astype(np.float64), port[prefix + c]
        np.testing.assert_array_less(np.abs(a - b), 1e-4 * s + 1e-4 * np.abs(a) + 1e-12, err_msg=prefix + c)
    for st in ("_mean", "_std"):
        assert abs(float(ref[prefix + st]) - port[prefix + st]) <= 1e-4 * s + 1e-4 * abs(float(ref[prefix + st]))


@pytest.mark.parametrize("level", LEVELS)
def test_backbone_and_head_outputs(ref, port, level):
    for group in ("feat", "head_logits", "head_regraw", "head_reg", "head_ctr", "head_top"):
        _check_map(ref, port, f"{group}_{level}")


def test_bottom_up_and_bases(ref, port):
    for k in ("res3", "res4", "res5"):
        _check_map(ref, port, "bottomup_" + k)
    _check_map(ref, port, "bases")
    s = float(ref["bases_std"])
    assert np.all(np.abs(ref["bases_full"] - port["bases_full"]) <= 1e-4 * s + 1e-4 * np.abs(ref["bases_full"]))


def test_candidates_and_detections(ref, port):
    key = lambda d, p: set(zip(d[p + "level"].tolist(), d[p + "loc"].tolist(), d[p + "class"].tolist()))  # noqa: E731
    assert key(ref, "cand_") == key(port, "cand_")
    det_key = lambda d: list(zip(d["det_level"].tolist(), d["det_loc"].tolist(), d["det_classes"].tolist()))  # noqa
    assert port["det_valid_is_prefix"]
    assert det_key(ref) == det_key(port), "same detections in the same (score) order"
    np.testing.assert_allclose(port["det_scores"], ref["det_scores"], atol=1e-4)
    np.testing.assert_allclose(port["det_boxes_resized"], ref["det_boxes_resized"], atol=0.01, rtol=1e-5)
    ts = float(np.std(ref["det_top_feat"]))
    assert np.all(np.abs(port["det_top_feat"] - ref["det_top_feat"]) <= 1e-4 * ts + 1e-4 * np.abs(ref["det_top_feat"]))
    assert np.abs(port["det_mask_probs"] - ref["det_mask_probs"]).max() <= 1e-3


def test_fixture_compare_passes(ref, port):
    report = make_reference.compare(ref, port)
    failing = {k: v for k, v in report.items() if k.endswith(("within_tol", "all_pass")) and v is False}
    assert report["all_pass"], (failing, report)
    assert report["instances_count"][0] == 62 and report["instances_matched"] == 62


def test_final_instances_through_predictor_and_wrapped_legacy_file(blendmask_weights, ref):
    """The predictor (resize included) on image.png, from the {'model': ...} file in torch's legacy format."""
    cfg = setup_cfg(CONFIG, ["MODEL.WEIGHTS", blendmask_weights["wrapped"]])
    predictor = Predictor(cfg)
    inst = predictor(read_image(os.path.join(FIXTURE, "image.png"), format="BGR"))
    assert inst.masks.shape[1:] == tuple(ref["inst_mask_hw"])
    port = {"inst_boxes": inst.boxes, "inst_scores": inst.scores, "inst_classes": inst.classes,
            "inst_mask_rle": [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in inst.masks]}
    _instances_pass(ref, port)


def _instances_pass(ref, port):
    report = make_reference.compare(ref, {**_only_instances(ref), **port})
    assert report["instances_all_pass"], report


def _only_instances(ref):
    """The reference's own pre-instance entries, so that compare() judges the instances alone."""
    return {k: v for k, v in ref.items() if not k.startswith("inst_")}


def test_predict_cli(blendmask_weights, ref, tmp_path):
    from jaxseg.main import main

    out = tmp_path / "out"
    rc = main(["--config", CONFIG, "--predict", os.path.join(FIXTURE, "image.png"), "--output", str(out),
               "MODEL.WEIGHTS", blendmask_weights["bare"]])
    assert rc == 0
    results = json.load(open(out / "coco_instances_results.json"))
    assert (out / "image.png").exists()
    from jaxseg.data.builtin_meta import COCO_THING_CONTIGUOUS_TO_DATASET_ID as ids

    to_contiguous = {v: k for k, v in ids.items()}
    port = {"inst_boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)]),
            "inst_scores": np.array([r["score"] for r in results]),
            "inst_classes": np.array([to_contiguous[r["category_id"]] for r in results]),
            "inst_mask_rle": [r["segmentation"]["counts"].encode() for r in results]}
    _instances_pass(ref, port)


def test_ffi_kernels_give_the_same_instances(blendmask_weights, ref):
    from jaxseg.kernels import ffi

    if not ffi.is_built():
        if os.environ.get("JAXSEG_REQUIRE_FFI") == "1":
            pytest.fail("JAXSEG_REQUIRE_FFI=1 but the FFI kernels are not built")
        pytest.skip("the FFI kernels are not built (pip install -e . builds them)")
    cfg = setup_cfg(CONFIG, ["MODEL.WEIGHTS", blendmask_weights["bare"], "MODEL.KERNELS", "ffi"])
    inst = Predictor(cfg)(read_image(os.path.join(FIXTURE, "image.png"), format="BGR"))
    port = {"inst_boxes": inst.boxes, "inst_scores": inst.scores, "inst_classes": inst.classes,
            "inst_mask_rle": [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in inst.masks]}
    _instances_pass(ref, port)

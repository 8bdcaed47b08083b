"""Parity with gakkiri/EmbedMask MS_R_50_2x on tests/data/embedmask_R_50 (seeded random weights, a real photo).

The fixture's own `compare()` (make_reference.py, numpy only) applies its README's tolerances: ResNet/FPN features,
every head output (towers, logits, centerness, regression, proposal embeddings, margins, the pixel tower and
embedding at stride 8 and 4), the 100 detections with their embeddings and margins, and the final instances with
their masks. The tests below also check each stage on its own, so that a failure names it.
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
from jaxseg.errors import UserError
from jaxseg.models.layers import upsample_bilinear
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "embedmask_R_50")
CONFIG = os.path.join(HERE, "..", "configs", "EmbedMask", "MS_R_50_2x.yaml")
LEVELS = ["p3", "p4", "p5", "p6", "p7"]
CROP = 8

make_reference = fixture_module("embedmask_R_50", "make_reference")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz"), allow_pickle=False))


@pytest.fixture(scope="module")
def setup(embedmask_weights):
    cfg = setup_cfg(CONFIG, [])
    model = build_model(cfg)
    return cfg, model, load_weights(cfg, embedmask_weights["wrapped"], model=model)


def _stages(m, images, hw):
    """Everything the reference records, from one forward pass (channels last)."""
    feats = m.extract_features(images, hw)
    bottom_up = m.backbone.bottom_up(m.input_spec.normalize(images, hw))
    head_mod = m.proposal_generator.fcos_head
    p = [feats[k] for k in LEVELS]
    head = m.proposal_generator.head_outputs(feats)
    cls_tower = [head_mod._tower(x, "cls_tower") for x in p]
    maps = head_mod.embedding_maps(head)
    return dict(bottom_up=bottom_up, feats=feats, head=head, cls_tower=cls_tower,
                pixel_tower=head_mod.pixel_tower(p[0]), maps=maps, det=m(images, hw))


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

    def entries(prefix, x):  # x (1, H, W, C) -> the reference's statistics of (C, H, W)
        t = np.asarray(x[0], np.float64).transpose(2, 0, 1)
        c, hh, ww = t.shape
        d[prefix + "_shape"] = np.array((1, c, hh, ww))
        d[prefix + "_mean"], d[prefix + "_std"] = t.mean(), t.std(ddof=1)  # torch.std: unbiased
        d[prefix + "_chan_mean"] = t.mean((1, 2))
        (y0, x0), (y1, x1) = make_reference.crop_origin(hh, ww)
        d[prefix + "_crop"] = t[:CROP, y0:y0 + CROP, x0:x0 + CROP]
        d[prefix + "_crop_br"] = t[:CROP, y1:y1 + CROP, x1:x1 + CROP]

    for k in ("res3", "res4", "res5"):
        entries("bottomup_" + k, out["bottom_up"][k])
    head = out["head"]
    for i, k in enumerate(LEVELS):
        entries("feat_" + k, out["feats"][k])
        entries("cls_tower_" + k, out["cls_tower"][i])
        entries("bbox_tower_" + k, head["bbox_tower"][i])
        entries("logits_" + k, head["logits"][i])
        entries("ctrness_" + k, head["ctrness"][i])
        entries("reg_" + k, head["reg"][i])
        entries("proposal_embed_" + k, out["maps"]["proposal_embed"][i])
        entries("margin_" + k, out["maps"]["margin"][i][..., None])
    entries("pixel_tower", out["pixel_tower"])
    entries("pixel_embed", head["pixel_embed"])
    entries("pixel_embed_up", np.asarray(upsample_bilinear(jnp.asarray(head["pixel_embed"]), 2)))

    det = {k: v[0] for k, v in out["det"].items()}
    valid = det["valid"]
    d["det_valid_is_prefix"] = bool(valid[:valid.sum()].all())
    for key, name in (("boxes", "boxes"), ("scores", "scores"), ("classes", "classes"), ("level", "level"),
                      ("loc", "location"), ("proposal_embeds", "proposal_embeds"), ("margins", "margins"),
                      ("mask_prob_s4", "mask_probs_s4")):
        d["det_" + key] = det[name][valid]

    post = jax.device_get(jax.jit(model.postprocess, static_argnames="canvas_hw")(
        out["det"], hw, jnp.array([[512, 512]], jnp.int32), canvas_hw=(512, 512)))
    keep = post["valid"][0]
    d["inst_boxes"], d["inst_scores"], d["inst_classes"] = (post[k][0][keep] for k in ("boxes", "scores", "classes"))
    d["inst_proposal_embeds"], d["inst_margins"] = det["proposal_embeds"][keep], det["margins"][keep]
    masks = post["masks"][0][keep]
    d["inst_mask_rle"] = np.array([mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
                                   for m in masks], dtype=object)
    d["inst_mask_area"] = masks.sum(axis=(1, 2))
    return d


def _check_map(ref, port, prefix):
    s = float(ref[prefix + "_std"])
    assert tuple(ref[prefix + "_shape"]) == tuple(port[prefix + "_shape"]), prefix
    for c in ("_crop", "_crop_br", "_chan_mean"):
        a, b = ref[prefix + c].astype(np.float64), port[prefix + c]
        np.testing.assert_array_less(np.abs(a - b), 1e-4 * s + 1e-4 * np.abs(a) + 1e-12, err_msg=prefix + c)
    for st in ("_mean", "_std"):
        assert abs(float(ref[prefix + st]) - port[prefix + st]) <= 2e-4 * s, prefix + st


@pytest.mark.parametrize("level", LEVELS)
def test_backbone_and_head_outputs(ref, port, level):
    for group in ("feat", "cls_tower", "bbox_tower", "logits", "ctrness", "reg", "proposal_embed", "margin"):
        _check_map(ref, port, f"{group}_{level}")


def test_bottom_up_and_pixel_embedding(ref, port):
    for k in ("bottomup_res3", "bottomup_res4", "bottomup_res5", "pixel_tower", "pixel_embed", "pixel_embed_up"):
        _check_map(ref, port, k)


def test_detections_embeddings_and_mask_probabilities(ref, port):
    key = lambda d: list(zip(d["det_level"].tolist(), d["det_loc"].tolist(), d["det_classes"].tolist()))  # noqa
    assert port["det_valid_is_prefix"]
    assert len(key(port)) == 100 and set(key(ref)) == set(key(port))
    j = np.array([key(port).index(k) for k in key(ref)])
    np.testing.assert_allclose(port["det_scores"][j], ref["det_scores"], atol=1e-4)
    np.testing.assert_allclose(port["det_boxes"][j], ref["det_boxes"], atol=0.01, rtol=1e-5)
    np.testing.assert_allclose(port["det_margins"][j], ref["det_margins"], rtol=1e-4)
    es = float(ref["proposal_embed_p3_std"])
    assert np.all(np.abs(port["det_proposal_embeds"][j] - ref["det_proposal_embeds"])
                  <= 1e-4 * es + 1e-4 * np.abs(ref["det_proposal_embeds"]))
    # the box-masked probabilities at stride 4, before the resizes: same support, values to 1e-4
    a, b = ref["det_mask_prob_s4"], port["det_mask_prob_s4"][j]
    assert a.shape == b.shape and np.array_equal(a > 0, b > 0)
    assert np.abs(a - b).max() <= 1e-4


def test_fixture_compare_passes(ref, port):
    report = make_reference.compare(ref, port)
    assert report["features_within_tol"], report
    assert report["det_all_pass"], report
    assert report["instances_all_pass"], report
    assert report["instances_count"] == [100, 100] and report["instances_matched"] == 100


def _instances_pass(ref, inst):
    port = {k: v for k, v in ref.items() if not k.startswith("inst_")}
    port.update(inst_boxes=inst.boxes, inst_scores=inst.scores, inst_classes=inst.classes,
                inst_mask_rle=[mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in inst.masks],
                inst_mask_area=inst.masks.sum(axis=(1, 2)))
    # the predictor returns no embeddings: judge them on the reference's own values, matched by box and class
    order = [int(np.argmax([(c == rc) * _iou(b, rb) for c, b in zip(inst.classes, inst.boxes)]))
             for rc, rb in zip(ref["inst_classes"], ref["inst_boxes"])]
    inv = np.argsort(order)
    port["inst_proposal_embeds"], port["inst_margins"] = ref["inst_proposal_embeds"][inv], ref["inst_margins"][inv]
    report = make_reference.compare(ref, port)
    assert report["instances_all_pass"], report


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_final_instances_through_predictor_from_bare_state_dict(embedmask_weights, ref):
    """The predictor (resize included) on image.png, from the bare state dict (no pixel_mean / pixel_std)."""
    cfg = setup_cfg(CONFIG, ["MODEL.WEIGHTS", embedmask_weights["bare"]])
    inst = Predictor(cfg)(read_image(os.path.join(FIXTURE, "image.png"), format="BGR"))
    assert inst.masks.shape[1:] == tuple(ref["inst_mask_hw"])
    _instances_pass(ref, inst)


def test_batch_of_two_gives_each_image_its_own_instances(setup, ref):
    """Upstream decodes batch size 1 only; here image 0 alone, and images (flipped 0, 0) together, give the same."""
    cfg, model, variables = setup
    img = ref["resized_bgr_uint8"]
    h, w = img.shape[:2]
    both = np.stack([img[:, ::-1], img]).astype(np.uint8)
    hw = jnp.array([[h, w], [h, w]], jnp.int32)
    run = jax.jit(model.apply)
    pair = jax.device_get(run(variables, both, hw))
    for i in range(2):
        alone = jax.device_get(run(variables, both[i:i + 1], hw[i:i + 1]))
        for k in ("boxes", "scores", "classes", "valid", "margins", "proposal_embeds", "mask_probs_s4"):
            np.testing.assert_allclose(pair[k][i], alone[k][0], rtol=1e-5, atol=1e-5, err_msg=f"image {i} {k}")
    assert pair["valid"][0].sum() > 0 and not np.array_equal(pair["boxes"][0], pair["boxes"][1])


def test_pixel_mean_in_checkpoint_must_match_the_config(embedmask_weights):
    cfg = setup_cfg(CONFIG, ["MODEL.PIXEL_MEAN", "[102.9801, 115.9465, 122.7717]"])
    with pytest.raises(UserError, match=r"pixel_mean.*MODEL\.PIXEL_MEAN"):
        load_weights(cfg, embedmask_weights["wrapped"])


def test_predict_cli(embedmask_weights, ref, tmp_path):
    import json

    from jaxseg.main import main

    out = tmp_path / "pred"
    rc = main(["--config", CONFIG, "--predict", os.path.join(FIXTURE, "image.png"), "--output", str(out),
               "--confidence-threshold", "0.0", "MODEL.WEIGHTS", embedmask_weights["wrapped"]])
    assert rc == 0
    records = json.loads((out / "coco_instances_results.json").read_text())
    assert len(records) == len(ref["inst_scores"])
    got = sorted(round(r["score"], 4) for r in records)
    np.testing.assert_allclose(got, sorted(np.round(ref["inst_scores"], 4)), atol=2e-4)

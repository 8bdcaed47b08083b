"""Training-time pieces: matcher, sampling, schedule, optimizer groups, mask targets, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg.config import setup_cfg
from jaxseg.engine.optim import build_optimizer, lr_schedule, stop_frozen_gradients
from jaxseg.engine.train import frozen_mask
from jaxseg.models.ops.matcher import match, pairwise_iou
from jaxseg.models.ops.sampling import subsample_labels
from jaxseg.models.rcnn.roi_heads import label_and_sample_proposals, mask_targets


def test_pairwise_iou_detectron2_vectors():
    b1 = jnp.array([[0, 0, 1, 1], [0, 0, 1, 1]], jnp.float32)
    b2 = jnp.array([[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 1, 0.5], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1],
                    [0.5, 0.5, 1.5, 1.5]], jnp.float32)
    want = [1, 0.5, 0.5, 0.25, 0.25, 0.25 / (2 - 0.25)]
    np.testing.assert_allclose(pairwise_iou(b1, b2), [want, want], rtol=1e-6)


def test_match_thresholds_and_low_quality():
    q = jnp.array([[0.1, 0.5, 0.75, 0.2],
                   [0.25, 0.2, 0.1, 0.0],    # best IoU 0.25 -> prediction 0 becomes positive (low quality)
                   [0.9, 0.9, 0.9, 0.9]])    # padding row: ignored
    valid = jnp.array([True, True, False])
    m, lab = match(q, valid, [0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    np.testing.assert_array_equal(m, [1, 0, 0, 0])
    np.testing.assert_array_equal(lab, [1, -1, 1, 0])
    _, lab = match(q, valid, [0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    np.testing.assert_array_equal(lab, [0, -1, 1, 0])
    _, lab = match(q, jnp.zeros(3, bool), [0.5], [0, 1], False)
    np.testing.assert_array_equal(lab, [0, 0, 0, 0])


@pytest.mark.parametrize("npos, nneg", [(3, 100), (100, 100), (0, 5), (100, 10)])
def test_subsample_counts(npos, nneg):
    n = 300
    pos = jnp.arange(n) < npos
    neg = (jnp.arange(n) >= 150) & (jnp.arange(n) < 150 + nneg)
    idx, is_pos, valid = subsample_labels(jax.random.PRNGKey(0), pos, neg, 64, 0.25)
    want_pos = min(npos, 16)
    want_neg = min(nneg, 64 - want_pos)
    assert int(is_pos.sum()) == want_pos and int(valid.sum()) == want_pos + want_neg
    idx, is_pos, valid = map(np.asarray, (idx, is_pos, valid))
    assert np.asarray(pos)[idx[is_pos]].all() and np.asarray(neg)[idx[valid & ~is_pos]].all()
    assert len(set(idx[valid].tolist())) == valid.sum()
    assert (is_pos[:want_pos]).all()  # positives first


def test_label_and_sample_appends_gt_and_labels_background():
    props = jnp.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 10]], jnp.float32)
    gt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0]], jnp.float32)
    s = label_and_sample_proposals(jax.random.PRNGKey(0), props, jnp.ones(3, bool), gt, jnp.array([4, 0]),
                                   jnp.array([True, False]), num_classes=6, batch_size_per_image=8,
                                   positive_fraction=0.5, iou_thresholds=(0.5,), iou_labels=(0, 1))
    valid = np.asarray(s["valid"])
    assert valid.sum() == 4  # 3 proposals + 1 valid GT box
    cls = np.asarray(s["classes"])[valid]
    assert sorted(cls.tolist()) == [4, 4, 4, 6]


def test_mask_targets_bitmask_equal_detectron2():
    # detectron2's BitMasks.crop_and_resize: torchvision roi_align (aligned, adaptive) on the image-sized
    # masks, >= 0.5. Here the masks sit zero-padded in a larger batch canvas, boxes touch the image border.
    torch = pytest.importorskip("torch")
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    n, g, hp, wp, f = 2, 3, 96, 128, 40
    hws = np.array([[80, 100], [96, 117]], np.int32)
    canvas = np.zeros((n, g, hp, wp), np.uint8)
    for i, (h, w) in enumerate(hws):
        yy, xx = np.mgrid[:h, :w]
        for j in range(g):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 60)
            canvas[i, j, :h, :w] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) | (rng.random((h, w)) < 0.05)
    xy = rng.uniform(-10, 110, (n, f, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 70, (n, f, 2))], -1)
    boxes = np.minimum(np.maximum(boxes, 0), np.tile(hws[:, ::-1], 2)[:, None]).astype(np.float32)  # clipped
    matches = rng.integers(0, g, (n, f)).astype(np.int32)
    targets = {"gt_bitmasks": jnp.asarray(canvas), "image_hw": jnp.asarray(hws)}
    got = np.asarray(mask_targets(targets, jnp.asarray(boxes), jnp.asarray(matches), 28))
    for i, (h, w) in enumerate(hws):
        masks = torch.from_numpy(canvas[i, matches[i], :h, :w].astype(np.float32))[:, None]
        rois = torch.cat([torch.arange(f, dtype=torch.float32)[:, None], torch.from_numpy(boxes[i])], 1)
        want = (roi_align(masks, rois, (28, 28), 1.0, 0, True)[:, 0] >= 0.5).numpy()
        assert np.array_equal(got[i] > 0, want), i


def test_mask_targets_polygons_follow_matches():
    # two instances (a square, a triangle); the RoI matched to each gets that instance's polygon
    from jaxseg.data.masks import pack_polygons

    square = np.array([[10.0, 10.0], [40.0, 10.0], [40.0, 40.0], [10.0, 40.0]])
    tri = np.array([[50.0, 50.0], [90.0, 50.0], [50.0, 90.0]])
    packed = pack_polygons([[square], [tri]], 8, 2)
    targets = {"gt_polygon_xy": jnp.asarray(packed["xy"])[None], "gt_polygon_id": jnp.asarray(packed["polygon"])[None],
               "gt_polygon_start": jnp.asarray(packed["start"])[None]}
    boxes = jnp.array([[[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0], [10.0, 10.0, 25.0, 40.0]]])
    t = np.asarray(mask_targets(targets, boxes, jnp.array([[0, 1, 0]]), 28))
    assert t[0, 0].all() and t[0, 2].all()
    assert t[0, 1, 0, 0] == 1 and t[0, 1, -1, -1] == 0 and 0.4 < t[0, 1].mean() < 0.6


def _cfg(*opts):
    return setup_cfg(None, list(opts))


def test_lr_schedule_warmup_and_steps():
    cfg = _cfg("SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "100", "SOLVER.WARMUP_FACTOR", "0.001",
               "SOLVER.STEPS", "(200, 300)", "SOLVER.MAX_ITER", "400")
    lr = lr_schedule(cfg)
    np.testing.assert_allclose(float(lr(0)), 0.02 * 0.001, rtol=1e-5)
    np.testing.assert_allclose(float(lr(50)), 0.02 * (0.001 * 0.5 + 0.5), rtol=1e-5)
    np.testing.assert_allclose([float(lr(s)) for s in (100, 199, 200, 299, 300)],
                               [0.02, 0.02, 0.002, 0.002, 0.0002], rtol=1e-5)
    # steps beyond MAX_ITER are dropped (with a warning, tested in test_config_unsupported.py), as detectron2 does
    np.testing.assert_allclose(float(lr_schedule(_cfg("SOLVER.STEPS", "(500,)", "SOLVER.MAX_ITER", "400",
                                                          "SOLVER.WARMUP_ITERS", "0"))(399)),
                               float(_cfg().SOLVER.BASE_LR), rtol=1e-6)


def test_optimizer_weight_decay_groups_and_freeze():
    cfg = _cfg("SOLVER.BASE_LR", "1.0", "SOLVER.MOMENTUM", "0.0", "SOLVER.WARMUP_ITERS", "0",
               "SOLVER.WEIGHT_DECAY", "0.1", "SOLVER.WEIGHT_DECAY_NORM", "0.0", "MODEL.BACKBONE.FREEZE_AT", "2")
    params = {"backbone": {"bottom_up": {"stem": {"conv1": {"kernel": jnp.ones(2)}},
                                         "res2_0": {"conv1": {"kernel": jnp.ones(2)}},
                                         "res3_0": {"conv1": {"kernel": jnp.ones(2),
                                                              "norm": {"weight": jnp.ones(2)}}}}},
              "roi_heads": {"fc": {"bias": jnp.ones(2)}}}
    tx = build_optimizer(cfg, params, frozen_mask(_model(cfg), params))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    bu = new["backbone"]["bottom_up"]
    np.testing.assert_allclose(bu["stem"]["conv1"]["kernel"], 1.0)       # frozen
    np.testing.assert_allclose(bu["res2_0"]["conv1"]["kernel"], 1.0)     # frozen
    np.testing.assert_allclose(bu["res3_0"]["conv1"]["kernel"], 0.9)     # decayed by lr * wd
    np.testing.assert_allclose(bu["res3_0"]["conv1"]["norm"]["weight"], 1.0)  # WEIGHT_DECAY_NORM 0
    np.testing.assert_allclose(new["roi_heads"]["fc"]["bias"], 0.9)     # bias: same as WEIGHT_DECAY
    model = _model(cfg)
    assert model.is_frozen(("backbone", "bottom_up", "res2_2", "conv3", "kernel"))
    assert not model.is_frozen(("backbone", "bottom_up", "res3_0", "conv1", "kernel"))
    assert not _model(_cfg("MODEL.BACKBONE.FREEZE_AT", "5")).is_frozen(("backbone", "fpn_lateral2", "kernel"))


def _model(cfg):
    """The R50-FPN model with cfg's FREEZE_AT (only its is_frozen is used)."""
    import os

    from jaxseg.models.registry import build_model

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")
    return build_model(setup_cfg(config, ["MODEL.BACKBONE.FREEZE_AT", str(cfg.MODEL.BACKBONE.FREEZE_AT)]))


def test_stop_frozen_gradients_zero_only_frozen_stages():
    params = {"backbone": {"bottom_up": {"stem": {"conv1": {"kernel": jnp.array(2.0)}},
                                         "res2_0": {"conv1": {"kernel": jnp.array(3.0)}},
                                         "res3_0": {"conv1": {"kernel": jnp.array(4.0)}}}},
              "roi_heads": {"fc": {"bias": jnp.array(5.0)}}}

    def loss(p):  # a chain through every stage, as the backbone is
        bu = p["backbone"]["bottom_up"]
        x = bu["stem"]["conv1"]["kernel"] * bu["res2_0"]["conv1"]["kernel"]
        return x * bu["res3_0"]["conv1"]["kernel"] * p["roi_heads"]["fc"]["bias"]

    full = jax.grad(loss)(params)
    frozen = frozen_mask(_model(_cfg("MODEL.BACKBONE.FREEZE_AT", "2")), params)
    grads = jax.grad(lambda p: loss(stop_frozen_gradients(p, frozen)))(params)
    bu = grads["backbone"]["bottom_up"]
    assert float(bu["stem"]["conv1"]["kernel"]) == 0.0 and float(bu["res2_0"]["conv1"]["kernel"]) == 0.0
    assert float(bu["res3_0"]["conv1"]["kernel"]) == float(full["backbone"]["bottom_up"]["res3_0"]["conv1"]["kernel"])
    assert float(grads["roi_heads"]["fc"]["bias"]) == float(full["roi_heads"]["fc"]["bias"]) == 24.0
    assert float(loss(stop_frozen_gradients(params, frozen))) == float(loss(params))


@pytest.mark.parametrize("fg_counts", [(3, 1), (4, 5), (9, 16)])
def test_mask_loss_on_fewest_rows_equals_loss_on_all(fg_counts):
    """The mask head runs on 1/4, 1/2 or all of the foreground rows; loss and gradients equal the full run's."""
    import os

    from jaxseg.engine.train import initial_variables
    from jaxseg.models.registry import build_model

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = setup_cfg(os.path.join(root, "configs", "quickstart", "shapes_mask_rcnn.yaml"), ["MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    variables = initial_variables(cfg, model, 0)
    rng = np.random.default_rng(sum(fg_counts))
    n, rows, g = 2, 64, 3  # ROI batch 64 per image: 16 foreground rows at most
    features = {f"p{i}": jnp.asarray(rng.normal(size=(n, 128 >> i, 128 >> i, 64)), jnp.float32) for i in range(2, 6)}
    xy = rng.uniform(0, 80, (n, rows, 2))
    boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(8, 40, (n, rows, 2))], -1), jnp.float32)
    is_fg = jnp.asarray(np.arange(rows)[None] < np.array(fg_counts)[:, None])
    s = {"boxes": boxes, "is_fg": is_fg, "classes": jnp.asarray(rng.integers(0, 6, (n, rows))),
         "matches": jnp.asarray(rng.integers(0, g, (n, rows)))}
    gxy = rng.uniform(0, 80, (n, g, 2))
    targets = {"gt_boxes": jnp.asarray(np.concatenate([gxy, gxy + 30], -1), jnp.float32),
               "gt_bitmasks": jnp.asarray(rng.integers(0, 2, (n, g, 128, 128)), jnp.uint8),
               "image_hw": jnp.array([[128, 128], [120, 100]], jnp.int32)}

    def loss(params, method):
        return model.apply({**variables, "params": params}, features, s, targets,
                           method=lambda m, *a: method(m.roi_heads, *a))

    full = lambda h, *a: h._mask_loss_rows(*a, rows=16)  # noqa: E731
    switched = lambda h, *a: h._mask_loss(*a)  # noqa: E731
    (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables["params"], m)
                          for m in (switched, full))
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    assert float(lb) > 0
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

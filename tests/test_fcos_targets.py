"""FCOS training targets and losses against AdelaiDet's recorded training step (tests/data/blendmask_R_50_3x/train)
and against a plain per-location loop written here from the rules (README "Porting pitfalls of the training path").

Exact: labels, positives, assigned GT, per-level counts. Float targets and normalisers: 1e-6 relative. Losses:
2e-5 relative (the fixture's tolerances).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models.fcos.losses import fcos_losses, iou_and_giou, sigmoid_focal_loss
from jaxseg.models.fcos.targets import fcos_locations, fcos_targets, level_ranges, location_levels

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "blendmask_R_50_3x", "train")
STRIDES = (8, 16, 32, 64, 128)
SIZES = (64, 128, 256, 512)
C = 80


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(os.path.join(TRAIN, "reference_train.npz")))


@pytest.fixture(scope="module")
def meta():
    with open(os.path.join(TRAIN, "reference_train_meta.json")) as f:
        return json.load(f)


def feature_hw(padded_hw, strides=STRIDES):
    return [(-(-padded_hw[0] // s), -(-padded_hw[1] // s)) for s in strides]


def grid(padded_hw, strides=STRIDES):
    hw = feature_hw(padded_hw, strides)
    return fcos_locations(hw, strides), location_levels(hw), hw


def run_targets(padded_hw, boxes, classes, valid, *, num_classes=C, strides=STRIDES, sizes=SIZES,
                center_sample=True, pos_radius=1.5):
    """Jitted fcos_targets on a batch (N, G, ...) of numpy GT."""
    loc, lev, _ = grid(padded_hw, strides)
    fn = functools.partial(fcos_targets, loc, lev, strides, level_ranges(sizes, len(strides)),
                           num_classes=num_classes, center_sample=center_sample, pos_radius=pos_radius)
    out = jax.jit(fn)(jnp.asarray(boxes, jnp.float32), jnp.asarray(classes, jnp.int32), jnp.asarray(valid, bool))
    return {k: np.asarray(v) for k, v in out.items()}


def fixture_gt(ref):
    return ref["gt_boxes"][None], ref["gt_classes"][None].astype(np.int32), np.ones((1, len(ref["gt_boxes"])), bool)


def scatter(num_loc, index, values, fill=0.0):
    out = np.full((num_loc, *values.shape[1:]), fill, np.float32)
    out[index] = values
    return out


def loss_fn(num_classes=C, loc_loss_type="giou"):
    return jax.jit(functools.partial(fcos_losses, num_classes=num_classes, loc_loss_type=loc_loss_type))


# -- the per-location loop (the oracle) -------------------------------------------------------------------------

def loop_targets(locations, level_index, strides, ranges, boxes, classes, valid, num_classes, center_sample,
                 radius):
    """One image, every location, every GT, in float32 scalars: the README's rules, one at a time."""
    f32 = np.float32
    num_loc = len(locations)
    out = {"labels": np.full(num_loc, num_classes, np.int64), "gt_index": np.full(num_loc, -1, np.int64),
           "reg_targets": np.zeros((num_loc, 4), f32), "ctr_targets": np.zeros(num_loc, f32), "ambiguous": 0}
    rows = [k for k in range(len(boxes)) if valid[k]]
    # upstream's center sampling returns "no candidate" when the first GT's centre x is 0
    if not rows or (center_sample and (boxes[rows[0], 0] + boxes[rows[0], 2]) * f32(0.5) == 0):
        return out
    for i in range(num_loc):
        x, y = locations[i]
        s = strides[level_index[i]]
        lo, hi = (f32(v) for v in ranges[level_index[i]])
        best, best_area, n_cand = -1, None, 0
        for k in rows:
            x1, y1, x2, y2 = boxes[k]
            sides = x - x1, y - y1, x2 - x, y2 - y  # l, t, r, b
            if center_sample:
                cx, cy, rad = (x1 + x2) * f32(0.5), (y1 + y2) * f32(0.5), f32(s * radius)
                inside = min(x - max(cx - rad, x1), y - max(cy - rad, y1),
                             min(cx + rad, x2) - x, min(cy + rad, y2) - y) > 0
            else:
                inside = min(sides) > 0
            if not (inside and lo <= max(sides) <= hi):
                continue
            n_cand += 1
            area = (x2 - x1) * (y2 - y1)
            if best < 0 or area < best_area:
                best, best_area = k, area
        if best < 0:
            continue
        out["ambiguous"] += n_cand > 1
        x1, y1, x2, y2 = boxes[best]
        left, top, right, bottom = ((x - x1) / f32(s), (y - y1) / f32(s), (x2 - x) / f32(s), (y2 - y) / f32(s))
        out["labels"][i], out["gt_index"][i] = classes[best], best
        out["reg_targets"][i] = (left, top, right, bottom)
        lr = min(left, right) / max(left, right)
        out["ctr_targets"][i] = np.sqrt(lr * (min(top, bottom) / max(top, bottom)))
    return out


def loop_losses(logits, reg_pred, ctr_logits, labels, reg_t, ctr_t, num_classes, alpha=0.25, gamma=2.0):
    """float64 numpy losses of a batch from the loop's targets (whole-batch normalisers)."""
    x = logits.astype(np.float64)
    pos = labels != num_classes
    t = np.zeros_like(x)
    t[pos, labels[pos]] = 1.0
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    focal = (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma
    num_pos = max(pos.sum(), 1.0)
    denorm = max(ctr_t[pos].astype(np.float64).sum(), 1e-6)
    pr, tg = reg_pred[pos].astype(np.float64), reg_t[pos].astype(np.float64)
    inter = (np.minimum(pr[:, 0], tg[:, 0]) + np.minimum(pr[:, 2], tg[:, 2])) * \
        (np.minimum(pr[:, 1], tg[:, 1]) + np.minimum(pr[:, 3], tg[:, 3]))
    union = (pr[:, 0] + pr[:, 2]) * (pr[:, 1] + pr[:, 3]) + (tg[:, 0] + tg[:, 2]) * (tg[:, 1] + tg[:, 3]) - inter
    enc = (np.maximum(pr[:, 0], tg[:, 0]) + np.maximum(pr[:, 2], tg[:, 2])) * \
        (np.maximum(pr[:, 1], tg[:, 1]) + np.maximum(pr[:, 3], tg[:, 3]))
    giou = (inter + 1) / (union + 1) - (enc - union) / enc
    cx, ct = ctr_logits[pos].astype(np.float64), ctr_t[pos].astype(np.float64)
    bce = np.maximum(cx, 0) - cx * ct + np.log1p(np.exp(-np.abs(cx)))
    return {"loss_fcos_cls": focal.sum() / num_pos, "loss_fcos_loc": ((1 - giou) * ct).sum() / denorm,
            "loss_fcos_ctr": bce.sum() / num_pos}


def random_gt(rng, image_hw, g, num_valid, num_classes):
    """(G, 4) boxes with `num_valid` valid rows at random slots: plain boxes (half on a 2-pixel grid, so that sides
    hit locations and size bounds exactly), a box nested in the previous one, a duplicate of one (equal areas:
    the lowest index wins), boxes touching the image border."""
    h, w = image_hw
    boxes = []
    for k in range(num_valid):
        kind = ("plain", "nested", "duplicate", "border")[k % 4] if k else "plain"
        if kind == "nested":
            x1, y1, x2, y2 = boxes[-1]
            fx, fy = rng.uniform(0.05, 0.3, 2)
            bw, bh = x2 - x1, y2 - y1
            box = [x1 + fx * bw, y1 + fy * bh, x2 - rng.uniform(0, 0.3) * bw, y2 - rng.uniform(0, 0.3) * bh]
        elif kind == "duplicate":
            box = list(boxes[rng.integers(len(boxes))])
        else:
            bw, bh = rng.choice([16, 32, 64, 96, 128, 160, 200]) * rng.uniform(0.7, 1.3, 2)
            x1, y1 = rng.uniform(-0.2 * bw, w - 0.8 * bw), rng.uniform(-0.2 * bh, h - 0.8 * bh)
            box = [x1, y1, x1 + bw, y1 + bh]
            if kind == "border":
                side = rng.integers(4)
                box[side] = (0, 0, w, h)[side]
        if rng.random() < 0.5:
            box = [2 * round(v / 2) for v in box]
        box = np.clip(box, 0, [w, h, w, h])
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            box = np.array([8, 8, 40, 56], float)
        boxes.append(box)
    slots = np.sort(rng.choice(g, num_valid, replace=False))
    out = rng.uniform(0, 50, (g, 4)).astype(np.float32)  # garbage in the padding rows
    out[:, 2:] += out[:, :2]
    out[slots] = np.asarray(boxes, np.float32)
    valid = np.zeros(g, bool)
    valid[slots] = True
    return out, rng.integers(0, num_classes, g).astype(np.int32), valid


# -- 1. the fixture's targets -------------------------------------------------------------------------------------

def test_locations_and_ranges(ref, meta):
    loc, lev, hw = grid((800, 800))
    assert [h for h, _ in hw] == [100, 50, 25, 13, 7] == [w for _, w in hw]
    assert len(loc) == len(ref["labels_all"]) == 13343
    np.testing.assert_array_equal([h * w for h, w in hw], ref["num_locations_per_level"])
    np.testing.assert_array_equal(lev[ref["pos_flat_index"]], ref["pos_level"])
    np.testing.assert_array_equal(loc[ref["pos_flat_index"]], ref["pos_location"])
    assert loc.dtype == np.float32 and tuple(loc[0]) == (4, 4) and tuple(loc[100]) == (4, 12)
    assert level_ranges(meta["config"]["FCOS.SIZES_OF_INTEREST"], 5) == [tuple(r) for r in
                                                                           meta["config"]["size_ranges_p3_p7"]]
    with pytest.raises(ValueError):
        level_ranges(SIZES, 4)


def check_fixture_targets(ref, t):
    """Single-image targets `t` ((L,) arrays) equal the recorded ones."""
    np.testing.assert_array_equal(t["labels"], ref["labels_all"])
    pos = np.flatnonzero(t["positive"])
    np.testing.assert_array_equal(pos, ref["pos_flat_index"])
    np.testing.assert_array_equal(t["gt_index"][pos], ref["pos_gt_index"])
    np.testing.assert_array_equal(t["labels"][pos], ref["pos_label"])
    np.testing.assert_allclose(t["reg_targets"][pos], ref["pos_reg_target"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(t["ctr_targets"][pos], ref["pos_ctr_target"], rtol=1e-6, atol=0)
    assert not t["reg_targets"][~t["positive"]].any() and not t["ctr_targets"][~t["positive"]].any()


def test_fixture_targets(ref, meta):
    t = run_targets((800, 800), *fixture_gt(ref))
    assert t["labels"].dtype == np.int32 and t["gt_index"].dtype == np.int32 and t["positive"].dtype == bool
    assert t["reg_targets"].shape == (1, 13343, 4) and t["ctr_targets"].shape == (1, 13343)
    check_fixture_targets(ref, {k: v[0] for k, v in t.items()})
    _, lev, _ = grid((800, 800))
    np.testing.assert_array_equal(np.bincount(lev[t["positive"][0]], minlength=5), ref["num_pos_per_level"])
    np.testing.assert_array_equal(np.bincount(t["gt_index"][0][t["positive"][0]]), meta["summary"]["num_pos_per_gt"])
    loc, _, _ = grid((800, 800))
    np.testing.assert_array_equal(loc[t["positive"][0]], ref["pos_location"])
    _, extras = loss_fn()(jnp.zeros((1, 13343, C)), jnp.zeros((1, 13343, 4)), jnp.zeros((1, 13343)), t)
    np.testing.assert_allclose(float(extras["num_pos_avg"]), ref["num_pos_avg"], rtol=1e-6)
    np.testing.assert_allclose(float(extras["loss_denorm"]), ref["loss_denorm"], rtol=1e-6)


def test_loop_oracle_matches_fixture(ref):
    """The loop the random tests trust reproduces upstream's recorded targets too."""
    loc, lev, _ = grid((800, 800))
    o = loop_targets(loc, lev, STRIDES, level_ranges(SIZES, 5), ref["gt_boxes"], ref["gt_classes"],
                     np.ones(5, bool), C, True, 1.5)
    assert o["ambiguous"] > 0  # GT 2 nested in GT 1
    check_fixture_targets(ref, {**o, "positive": o["labels"] != C})


# -- 2. losses from the recorded predictions -----------------------------------------------------------------------

def fixture_losses(ref, loc_loss_type="giou", background_pred=0.0):
    t = run_targets((800, 800), *fixture_gt(ref))
    num_loc, pos = 13343, ref["pos_flat_index"]
    reg = scatter(num_loc, pos, ref["pos_reg_pred"], background_pred)[None]
    ctr = scatter(num_loc, pos, ref["pos_ctr_pred"], background_pred)[None]
    logits = scatter(num_loc, pos, ref["pos_logits"], -4.0)[None]
    return loss_fn(loc_loss_type=loc_loss_type)(logits, reg, ctr, t)


def test_fixture_iou_giou(ref):
    iou, giou = jax.jit(iou_and_giou)(ref["pos_reg_pred"], ref["pos_reg_target"])
    np.testing.assert_allclose(np.asarray(iou), ref["pos_iou"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(giou), ref["pos_giou"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("background_pred", [0.0, -3.0])
def test_fixture_loc_ctr_losses(ref, background_pred):
    """Only positives enter the box and centerness losses: garbage (even negative) elsewhere changes nothing."""
    losses, _ = fixture_losses(ref, background_pred=background_pred)
    np.testing.assert_allclose(float(losses["loss_fcos_loc"]), ref["loss_fcos_loc"], rtol=2e-5)
    np.testing.assert_allclose(float(losses["loss_fcos_ctr"]), ref["loss_fcos_ctr"], rtol=2e-5)


def test_fixture_other_loc_loss_types(ref):
    """"iou" = -log(iou): upstream's value is in the README's mutation table; "linear_iou" = 1 - iou."""
    losses, _ = fixture_losses(ref, "iou")
    np.testing.assert_allclose(float(losses["loss_fcos_loc"]), 1.017792, rtol=1e-6)
    losses, _ = fixture_losses(ref, "linear_iou")
    ctr = ref["pos_ctr_target"].astype(np.float64)
    expect = ((1 - ref["pos_iou"].astype(np.float64)) * ctr).sum() / ref["loss_denorm"]
    np.testing.assert_allclose(float(losses["loss_fcos_loc"]), expect, rtol=2e-5)
    with pytest.raises(ValueError):
        fixture_losses(ref, "smooth_l1")


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 1.5), (-1.0, 2.0), (0.25, 0.0)])
def test_sigmoid_focal_loss_vs_torchvision(alpha, gamma):
    """Values and gradients against torchvision's sigmoid_focal_loss (fvcore's formula) run in float64 on the same
    float32 inputs (float32 torch itself rounds BCE at large |x| to ~1e-6 absolute)."""
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, 4000), [-60, -20, -1e-3, 0, 1e-3, 20, 60]]).astype(np.float32)
    t = (rng.random(x.shape) < 0.3).astype(np.float32)
    t[:100] = rng.random(100)  # soft targets too
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    expect = tv_ops.sigmoid_focal_loss(xt, torch.tensor(t, dtype=torch.float64), alpha=alpha, gamma=gamma,
                                       reduction="none")
    expect.sum().backward()
    got = sigmoid_focal_loss(jnp.asarray(x), jnp.asarray(t), alpha, gamma)
    np.testing.assert_allclose(np.asarray(got), expect.detach().numpy(), rtol=1e-5, atol=1e-7)
    grad = jax.grad(lambda v: sigmoid_focal_loss(v, jnp.asarray(t), alpha, gamma).sum())(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_cls_normaliser_synthetic():
    """2 images x 3 locations x 4 classes, 3 positives in all: Σ focal(one-hot, background rows all zero) / 3."""
    logits = np.random.default_rng(1).normal(0, 2, (2, 3, 4)).astype(np.float32)
    labels = np.array([[4, 2, 0], [4, 4, 3]], np.int32)  # 4 = background
    pos = labels != 4
    targets = {"labels": jnp.asarray(labels), "positive": jnp.asarray(pos), "gt_index": jnp.zeros((2, 3), jnp.int32),
               "reg_targets": jnp.where(pos[..., None], 1.0, 0.0), "ctr_targets": jnp.where(pos, 0.5, 0.0)}
    losses, extras = loss_fn(4)(logits, jnp.ones((2, 3, 4)), jnp.zeros((2, 3)), targets)
    one_hot = np.zeros((2, 3, 4), np.float32)
    one_hot[pos, labels[pos]] = 1
    expect = np.asarray(sigmoid_focal_loss(logits, one_hot, 0.25, 2.0)).sum() / 3
    np.testing.assert_allclose(float(losses["loss_fcos_cls"]), expect, rtol=1e-6)
    assert float(extras["num_pos_avg"]) == 3 and float(extras["loss_denorm"]) == 1.5
    np.testing.assert_allclose(float(losses["loss_fcos_ctr"]), 3 * np.log(2) / 3, rtol=1e-6)  # BCE(0, 0.5) = log 2
    np.testing.assert_allclose(float(losses["loss_fcos_loc"]), 0.0, atol=1e-7)  # perfect boxes


# -- 3. generality --------------------------------------------------------------------------------------------------

def test_padded_gt_rows(ref):
    """The 5 GT in slots (0, 2, 3, 5, 6) of G = 8, the padding rows holding boxes that would win (small, inside
    the others) if they were read."""
    slots = np.array([0, 2, 3, 5, 6])
    boxes = np.tile(np.array([300, 150, 316, 170], np.float32), (8, 1))
    classes = np.full(8, 7, np.int32)
    boxes[slots], classes[slots] = ref["gt_boxes"], ref["gt_classes"]
    valid = np.isin(np.arange(8), slots)
    t = run_targets((800, 800), boxes[None], classes[None], valid[None])
    t = {k: v[0] for k, v in t.items()}
    assert (t["gt_index"][t["positive"]] == slots[:, None]).any(0).all()
    t["gt_index"] = np.where(t["positive"], np.searchsorted(slots, t["gt_index"]), 0)
    check_fixture_targets(ref, t)


def test_batch_of_two(ref):
    """The fixture's image and another one in one batch: each image's targets are its own; the losses use the
    batch's totals (= the per-image losses re-weighted by their normalisers)."""
    other = np.array([[10, 10, 200, 150], [400, 300, 780, 790], [300, 500, 360, 540], [0, 0, 0, 0]], np.float32)
    boxes = np.zeros((2, 6, 4), np.float32)
    boxes[0, :5], boxes[1, :4] = ref["gt_boxes"], other
    classes = np.zeros((2, 6), np.int32)
    classes[0, :5], classes[1, :3] = ref["gt_classes"], [3, 9, 27]
    valid = np.zeros((2, 6), bool)
    valid[0, :5], valid[1, :3] = True, True
    t = run_targets((800, 800), boxes, classes, valid)
    check_fixture_targets(ref, {k: v[0] for k, v in t.items()})
    loc, lev, _ = grid((800, 800))
    o = loop_targets(loc, lev, STRIDES, level_ranges(SIZES, 5), other, classes[1], valid[1], C, True, 1.5)
    np.testing.assert_array_equal(t["labels"][1], o["labels"])
    np.testing.assert_array_equal(t["reg_targets"][1], o["reg_targets"])

    rng = np.random.default_rng(3)
    logits = rng.normal(-3, 1, (2, 13343, C)).astype(np.float32)
    reg = rng.uniform(0, 6, (2, 13343, 4)).astype(np.float32)
    ctr = rng.normal(0, 1, (2, 13343)).astype(np.float32)
    fn = loss_fn()
    both, ex = fn(logits, reg, ctr, t)
    singles = [fn(logits[i:i + 1], reg[i:i + 1], ctr[i:i + 1], {k: v[i:i + 1] for k, v in t.items()})
               for i in range(2)]
    npos = [float(s[1]["num_pos_avg"]) for s in singles]
    den = [float(s[1]["loss_denorm"]) for s in singles]
    assert float(ex["num_pos_avg"]) == sum(npos) == t["positive"].sum()
    np.testing.assert_allclose(float(ex["loss_denorm"]), sum(den), rtol=1e-6)
    for name, norm in (("loss_fcos_cls", npos), ("loss_fcos_ctr", npos), ("loss_fcos_loc", den)):
        expect = sum(float(s[0][name]) * n for s, n in zip(singles, norm)) / sum(norm)
        np.testing.assert_allclose(float(both[name]), expect, rtol=2e-5)


@pytest.mark.parametrize("g", [0, 3])
def test_no_ground_truth(g):
    """No valid GT (or no GT slot): all background; box and centerness losses 0, class loss Σ focal / 1, all
    finite with finite gradients (upstream: empty sums, loss_denorm max(0, 1e-6), num_pos_avg max(0, 1))."""
    boxes = np.tile(np.array([[10, 10, 100, 100]], np.float32), (1, g, 1))
    t = run_targets((256, 320), boxes, np.zeros((1, g), np.int32), np.zeros((1, g), bool), num_classes=5)
    num_loc = t["labels"].shape[1]
    assert (t["labels"] == 5).all() and not t["positive"].any()
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (1, num_loc, 5)).astype(np.float32)
    reg = rng.normal(0, 2, (1, num_loc, 4)).astype(np.float32)  # even negative: must not matter
    ctr = rng.normal(0, 2, (1, num_loc)).astype(np.float32)

    def total(lg, rg, ct):
        losses, extras = fcos_losses(lg, rg, ct, t, num_classes=5)
        return sum(losses.values()), (losses, extras)

    grads, (losses, extras) = jax.jit(jax.grad(total, argnums=(0, 1, 2), has_aux=True))(logits, reg, ctr)
    assert float(extras["num_pos_avg"]) == 1.0 and float(extras["loss_denorm"]) == np.float32(1e-6)
    assert float(losses["loss_fcos_loc"]) == 0.0 and float(losses["loss_fcos_ctr"]) == 0.0
    expect = np.asarray(sigmoid_focal_loss(logits, np.zeros_like(logits), 0.25, 2.0)).sum()
    np.testing.assert_allclose(float(losses["loss_fcos_cls"]), expect, rtol=1e-6)
    assert all(np.isfinite(np.asarray(v)).all() for v in grads)
    assert not np.asarray(grads[1]).any() and not np.asarray(grads[2]).any()


def test_first_centre_x_zero_quirk():
    """Upstream's center sampling treats an image whose first GT box has centre x 0 (a zero-width box on the left
    border) as having no GT at all; without center sampling the other boxes keep their positives."""
    boxes = np.array([[[0, 10, 0, 60], [20, 20, 120, 140]]], np.float32)
    args = (boxes, np.array([[1, 2]], np.int32), np.ones((1, 2), bool))
    assert not run_targets((256, 256), *args, num_classes=5)["positive"].any()
    assert run_targets((256, 256), *args, num_classes=5, center_sample=False)["positive"].any()
    swapped = (boxes[:, ::-1], args[1], args[2])
    assert run_targets((256, 256), *swapped, num_classes=5)["positive"].any()


@pytest.mark.parametrize("seed,center_sample,radius,sizes", [
    (0, True, 1.5, SIZES), (1, True, 1.5, (32, 64, 96, 128)), (2, False, 1.5, (32, 64, 96, 128)),
    (3, True, 1.0, SIZES), (4, True, 2.5, (16, 48, 64, 128)), (5, False, 1.5, SIZES),
])
def test_random_boxes_vs_loop(seed, center_sample, radius, sizes):
    """2 images (210 x 270 in a 224 x 288 padded batch), G = 8 with 5 and 7 valid rows at random slots."""
    rng = np.random.default_rng(seed)
    padded, num_classes = (224, 288), 7
    gts = [random_gt(rng, (210, 270), 8, n, num_classes) for n in (5, 7)]
    boxes, classes, valid = (np.stack(v) for v in zip(*gts))
    t = run_targets(padded, boxes, classes, valid, num_classes=num_classes, sizes=sizes,
                    center_sample=center_sample, pos_radius=radius)
    loc, lev, _ = grid(padded)
    oracle = [loop_targets(loc, lev, STRIDES, level_ranges(sizes, 5), *gt, num_classes, center_sample, radius)
              for gt in gts]
    labels = np.stack([o["labels"] for o in oracle])
    assert (labels != num_classes).sum() > 20 and sum(o["ambiguous"] for o in oracle) > 0
    np.testing.assert_array_equal(t["labels"], labels)
    np.testing.assert_array_equal(t["positive"], labels != num_classes)
    np.testing.assert_array_equal(np.where(t["positive"], t["gt_index"], -1), np.stack([o["gt_index"] for o in oracle]))
    np.testing.assert_array_equal(t["reg_targets"], np.stack([o["reg_targets"] for o in oracle]))
    ctr_t = np.stack([o["ctr_targets"] for o in oracle])
    np.testing.assert_allclose(t["ctr_targets"], ctr_t, rtol=1e-6, atol=0)

    logits = rng.normal(-2, 1.5, (*labels.shape, num_classes)).astype(np.float32)
    reg = rng.uniform(0, 4, (*labels.shape, 4)).astype(np.float32)
    ctr = rng.normal(0, 1, labels.shape).astype(np.float32)
    losses, _ = loss_fn(num_classes)(logits, reg, ctr, t)
    expect = loop_losses(logits, reg, ctr, labels, np.stack([o["reg_targets"] for o in oracle]), ctr_t, num_classes)
    for name, value in expect.items():
        np.testing.assert_allclose(float(losses[name]), value, rtol=2e-5, err_msg=name)

"""Panoptic quality (jaxseg.evaluation.panoptic): hand-computed cases, edge cases, file I/O, and cross-checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxseg.errors import UserError
from jaxseg.evaluation.panoptic import (
    PQStat,
    detectron2_metrics,
    evaluate_panoptic,
    format_pq_table,
    id2rgb,
    pq_compute_single,
    read_panoptic_png,
    rgb2id,
)

PERSON, CAR, SKY, GRASS = 1, 2, 3, 4
CATEGORIES = {
    PERSON: {"id": PERSON, "name": "person", "isthing": 1},
    CAR: {"id": CAR, "name": "car", "isthing": 1},
    SKY: {"id": SKY, "name": "sky", "isthing": 0},
    GRASS: {"id": GRASS, "name": "grass", "isthing": 0},  # in no image: left out of every mean
}


def seg(sid: int, cat: int, crowd: int = 0, area: int | None = None) -> dict:
    out = {"id": sid, "category_id": cat, "iscrowd": crowd}
    if area is not None:
        out["area"] = area
    return out


def hand_case() -> tuple[np.ndarray, list[dict], np.ndarray, list[dict]]:
    """A 10x10 image whose PQ is worked out by hand below.

    Ground truth (rows r, columns c):
      rows 0-3           sky 30          40 px
      rows 4-5           person 10       20 px
      rows 6-7, c 0-4    car 20          10 px
      rows 6-7, c 5-9    person crowd 40 10 px
      rows 8-9           VOID            20 px
    Prediction:
      rows 0-1, c 0-4    car 2           -> 10 px, all on sky
      rows 0-1 c 5-9, rows 2-3, row 9 c 0-4: sky 4  -> 10 + 20 + 5 = 35 px, 5 on VOID
      rows 4-5 c 0-7, row 8 c 0-3: person 1         -> 16 + 4 = 20 px, 4 on VOID
      rows 4-5 c 8-9, rows 6-7 c 5-9: person 3      -> 4 + 10 = 14 px, 10 on the person crowd
      row 8 c 5-9        car 5           -> 5 px, all on VOID
      elsewhere          VOID (rows 6-7 c 0-4, row 8 c 4, row 9 c 5-9)

    person: pred 1 vs gt 10: inter 16, union = 20 + 20 - 16 - 4 (VOID) = 20, IoU 0.8 > 0.5 -> TP.
            pred 3 vs gt 10: inter 4, union 14 + 20 - 4 = 30, IoU 0.13 -> no match; the crowd is not
            matched. Unmatched, but (0 VOID + 10 crowd) / 14 = 0.71 > 0.5 -> ignored, not an FP.
            PQ = 0.8 / 1 = 0.8, SQ = 0.8, RQ = 1.
    car:    pred 2 overlaps no car -> FP ((0 VOID + 0 crowd) / 10 = 0); gt 20 unmatched -> FN.
            pred 5: 5 / 5 on VOID -> ignored. PQ = 0 / (0 + 0.5 + 0.5) = 0, SQ = 0, RQ = 0.
    sky:    pred 4 vs gt 30: inter 30, union 35 + 40 - 30 - 5 = 40, IoU 0.75 -> TP.
            PQ = 0.75, SQ = 0.75, RQ = 1.
    grass:  no TP, FP or FN -> 0 and not counted.
    All (n=3): PQ = SQ = (0.8 + 0 + 0.75) / 3 = 0.516667, RQ = 2/3.
    Things (n=2): PQ = SQ = 0.4, RQ = 0.5.   Stuff (n=1): PQ = SQ = 0.75, RQ = 1.
    """
    gt = np.zeros((10, 10), np.int64)
    gt[0:4] = 30
    gt[4:6] = 10
    gt[6:8, 0:5] = 20
    gt[6:8, 5:10] = 40
    gt_segs = [seg(30, SKY, area=40), seg(10, PERSON, area=20), seg(20, CAR, area=10), seg(40, PERSON, 1, area=10)]

    pred = np.zeros((10, 10), np.int64)
    pred[0:2, 0:5] = 2
    pred[0:2, 5:10] = 4
    pred[2:4] = 4
    pred[9, 0:5] = 4
    pred[4:6, 0:8] = 1
    pred[8, 0:4] = 1
    pred[4:6, 8:10] = 3
    pred[6:8, 5:10] = 3
    pred[8, 5:10] = 5
    pred_segs = [seg(1, PERSON), seg(2, CAR), seg(3, PERSON), seg(4, SKY), seg(5, CAR)]
    return gt, gt_segs, pred, pred_segs


def test_hand_case_counts_and_metrics():
    stat = pq_compute_single(*hand_case(), CATEGORIES)
    assert (stat[PERSON].tp, stat[PERSON].fp, stat[PERSON].fn) == (1, 0, 0)
    assert stat[PERSON].iou == pytest.approx(0.8)
    assert (stat[CAR].tp, stat[CAR].fp, stat[CAR].fn, stat[CAR].iou) == (0, 1, 1, 0.0)
    assert (stat[SKY].tp, stat[SKY].fp, stat[SKY].fn) == (1, 0, 0)
    assert stat[SKY].iou == pytest.approx(0.75)

    per_class = stat.per_class(CATEGORIES)
    assert per_class[PERSON] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0})
    assert per_class[CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert per_class[SKY] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})
    assert per_class[GRASS] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}

    assert stat.pq_average(CATEGORIES, None) == pytest.approx({"pq": 1.55 / 3, "sq": 1.55 / 3, "rq": 2 / 3, "n": 3})
    assert stat.pq_average(CATEGORIES, True) == pytest.approx({"pq": 0.4, "sq": 0.4, "rq": 0.5, "n": 2})
    assert stat.pq_average(CATEGORIES, False) == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})


def test_hand_case_gt_area_from_png_when_json_has_none():
    gt, gt_segs, pred, pred_segs = hand_case()
    no_area = [{k: v for k, v in s.items() if k != "area"} for s in gt_segs]
    a = pq_compute_single(gt, gt_segs, pred, pred_segs, CATEGORIES)
    b = pq_compute_single(gt, no_area, pred, pred_segs, CATEGORIES)
    assert a.pq_per_cat == b.pq_per_cat


def test_crowd_absorbs_only_its_own_category():
    # gt: a car crowd on the left half; a person prediction lying on it is an FP, a car one is not.
    gt = np.zeros((4, 4), np.int64)
    gt[:, :2] = 7
    gt_segs = [seg(7, CAR, crowd=1)]
    pred = np.zeros((4, 4), np.int64)
    pred[:2, :2] = 1
    pred[2:, :2] = 2
    stat = pq_compute_single(gt, gt_segs, pred, [seg(1, PERSON), seg(2, CAR)], CATEGORIES)
    assert stat[PERSON].fp == 1
    assert stat[CAR].fp == 0 and stat[CAR].fn == 0  # crowd gt is never an FN


def test_ignored_fraction_exactly_half_is_still_a_false_positive():
    gt = np.zeros((2, 4), np.int64)
    gt[:, 2:] = 9  # sky on the right, VOID on the left
    pred = np.full((2, 4), 1)  # one person segment: 4 of 8 px on VOID -> 0.5, not > 0.5
    stat = pq_compute_single(gt, [seg(9, SKY)], pred, [seg(1, PERSON)], CATEGORIES)
    assert stat[PERSON].fp == 1 and stat[SKY].fn == 1


@pytest.mark.parametrize("inside, matched", [(5, False), (6, True)])
def test_iou_exactly_half_is_not_a_match(inside, matched):
    # gt person: 10 px; prediction: `inside` of them -> IoU = inside / 10 (0.5 is not > 0.5).
    gt = np.zeros((1, 12), np.int64)
    gt[0, :10] = 3
    pred = np.zeros((1, 12), np.int64)
    pred[0, :inside] = 8
    stat = pq_compute_single(gt, [seg(3, PERSON)], pred, [seg(8, PERSON)], CATEGORIES)
    if matched:
        assert (stat[PERSON].tp, stat[PERSON].fp, stat[PERSON].fn) == (1, 0, 0)
        assert stat[PERSON].iou == pytest.approx(0.6)
    else:
        assert (stat[PERSON].tp, stat[PERSON].fp, stat[PERSON].fn, stat[PERSON].iou) == (0, 1, 1, 0.0)


def test_perfect_prediction_is_100():
    gt, gt_segs, _, _ = hand_case()
    pred_segs = [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs]  # crowd predicted too
    stat = pq_compute_single(gt, gt_segs, gt.copy(), pred_segs, CATEGORIES)
    results = {
        name: stat.pq_average(CATEGORIES, isthing)
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False))
    }
    # person, car, sky: one TP each with IoU 1; the crowd prediction lies on its crowd -> ignored.
    assert results["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}
    assert results["Things"]["n"] == 2 and results["Stuff"]["n"] == 1
    assert detectron2_metrics(results)["PQ_th"] == 100.0
    assert "|  All   | 100.000 | 100.000 | 100.000 |       3       |" in format_pq_table(results)


def test_image_without_segments():
    empty = np.zeros((5, 6), np.int64)
    stat = pq_compute_single(empty, [], empty, [], CATEGORIES)
    assert stat.pq_per_cat == {}
    assert stat.pq_average(CATEGORIES, None) == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    # ground truth all VOID: a prediction on it is ignored; ground truth without prediction: all FN.
    pred = np.ones((5, 6), np.int64)
    assert pq_compute_single(empty, [], pred, [seg(1, CAR)], CATEGORIES).pq_per_cat == {}
    stat = pq_compute_single(pred, [seg(1, CAR)], empty, [], CATEGORIES)
    assert (stat[CAR].tp, stat[CAR].fp, stat[CAR].fn) == (0, 0, 1)


def test_accumulation_over_images():
    gt, gt_segs, pred, pred_segs = hand_case()
    total = PQStat()
    total += pq_compute_single(gt, gt_segs, pred, pred_segs, CATEGORIES)
    total += pq_compute_single(gt, gt_segs, gt, [seg(s["id"], s["category_id"]) for s in gt_segs], CATEGORIES)
    assert (total[PERSON].tp, total[CAR].tp, total[CAR].fp, total[CAR].fn) == (2, 1, 1, 1)
    assert total[PERSON].iou == pytest.approx(1.8)
    # car: IoU sum 1 over TP 1, FP 1, FN 1 -> PQ 1 / 2, SQ 1, RQ 1 / 2
    assert total.per_class(CATEGORIES)[CAR] == pytest.approx({"pq": 0.5, "sq": 1.0, "rq": 0.5})


def test_id_encoding_round_trip():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256**3, size=(7, 9))
    ids[0, :4] = [0, 1, 256**3 - 1, 256 * 256 + 256 + 1]
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    assert tuple(rgb[0, 3]) == (1, 1, 1) and tuple(rgb[0, 2]) == (255, 255, 255)
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    assert int(rgb2id(np.array([3, 2, 1], np.uint8))) == 3 + 2 * 256 + 65536
    with pytest.raises(UserError):
        id2rgb(np.array([256**3]))


def test_input_errors_name_the_segment():
    gt, gt_segs, pred, pred_segs = hand_case()
    with pytest.raises(UserError, match="segment id 5 is in the PNG but not in segments_info"):
        pq_compute_single(gt, gt_segs, pred, pred_segs[:-1], CATEGORIES)
    with pytest.raises(UserError, match="segment id 77 is in segments_info but not in the PNG"):
        pq_compute_single(gt, gt_segs, pred, pred_segs + [seg(77, CAR)], CATEGORIES)
    with pytest.raises(UserError, match="segment 2 has unknown category_id 99"):
        pq_compute_single(gt, gt_segs, pred, pred_segs[:1] + [seg(2, 99)] + pred_segs[2:], CATEGORIES)
    with pytest.raises(UserError, match="segment 30 has unknown category_id 99"):
        pq_compute_single(gt, [seg(30, 99)] + gt_segs[1:], pred, pred_segs, CATEGORIES)
    with pytest.raises(UserError, match="segment id 3 appears more than once"):
        pq_compute_single(gt, gt_segs, pred, pred_segs + [seg(3, CAR)], CATEGORIES)
    with pytest.raises(UserError, match="prediction is 9x10"):
        pq_compute_single(gt, gt_segs, pred[:, :9], pred_segs, CATEGORIES)
    with pytest.raises(UserError, match="rgb2id"):
        pq_compute_single(gt, gt_segs, id2rgb(pred), pred_segs, CATEGORIES)


# ----------------------------------------------------------------------------- files


def write_dataset(root, images: list[tuple[str, int, np.ndarray, list[dict]]], name: str) -> str:
    """Write ``root/name.json`` and ``root/name/*.png`` in the COCO panoptic format; returns the json path."""
    folder = root / name
    folder.mkdir()
    anns = []
    for file_name, image_id, pan, segs in images:
        Image.fromarray(id2rgb(pan)).save(folder / file_name)
        anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segs})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"annotations": anns, "categories": list(CATEGORIES.values())}))
    return str(path)


def test_evaluate_panoptic_end_to_end(tmp_path):
    gt, gt_segs, pred, pred_segs = hand_case()
    perfect_segs = [seg(s["id"], s["category_id"]) for s in gt_segs]
    gt_json = write_dataset(tmp_path, [("a.png", 1, gt, gt_segs), ("b.png", 2, gt, gt_segs)], "gt")
    pred_json = write_dataset(
        tmp_path, [("b.png", 2, gt, perfect_segs), ("a.png", 1, pred, pred_segs), ("c.png", 3, gt, [])], "pred"
    )
    results = evaluate_panoptic(gt_json, None, pred_json, str(tmp_path / "pred"), progress=False)
    # Image 1 is the hand case, image 2 perfect (see test_accumulation_over_images):
    # person PQ = 1.8 / 2 = 0.9 (SQ 0.9, RQ 1); car 0.5 (SQ 1, RQ 0.5); sky 1.75 / 2 = 0.875 (SQ 0.875, RQ 1).
    assert results["per_class"][PERSON] == pytest.approx({"pq": 0.9, "sq": 0.9, "rq": 1.0})
    assert results["per_class"][CAR] == pytest.approx({"pq": 0.5, "sq": 1.0, "rq": 0.5})
    assert results["per_class"][SKY] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0})
    assert results["Things"] == pytest.approx({"pq": 0.7, "sq": 0.95, "rq": 0.75, "n": 2})
    assert results["Stuff"] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0, "n": 1})
    assert results["All"] == pytest.approx({"pq": 2.275 / 3, "sq": 2.775 / 3, "rq": 2.5 / 3, "n": 3})
    # detectron2's layout (tabulate "pipe", centred, .3f): a 7-character cell widens its column.
    assert format_pq_table(results).splitlines() == [
        "|        |   PQ   |   SQ   |   RQ    |  #categories  |",
        "|:------:|:------:|:------:|:-------:|:-------------:|",
        "|  All   | 75.833 | 92.500 | 83.333  |       3       |",
        "| Things | 70.000 | 95.000 | 75.000  |       2       |",
        "| Stuff  | 87.500 | 87.500 | 100.000 |       1       |",
    ]
    # A dict instead of a path works when the folder is given.
    with open(gt_json) as f:
        same = evaluate_panoptic(json.load(f), tmp_path / "gt", pred_json, None, progress=False)
    assert same == results


def test_evaluate_panoptic_file_errors(tmp_path):
    gt, gt_segs, pred, pred_segs = hand_case()
    gt_json = write_dataset(tmp_path, [("a.png", 1, gt, gt_segs)], "gt")
    pred_json = write_dataset(tmp_path, [("a.png", 1, pred, pred_segs)], "pred")
    with pytest.raises(UserError, match="json not found: .*nope.json"):
        evaluate_panoptic(str(tmp_path / "nope.json"), None, pred_json, None, progress=False)
    with pytest.raises(UserError, match="PNG folder not found: .*nowhere"):
        evaluate_panoptic(gt_json, None, pred_json, str(tmp_path / "nowhere"), progress=False)

    os.remove(tmp_path / "pred" / "a.png")
    with pytest.raises(UserError, match=r"panoptic PNG not found: .*pred.a\.png"):
        evaluate_panoptic(gt_json, None, pred_json, None, progress=False)
    Image.fromarray(id2rgb(pred)).save(tmp_path / "pred" / "a.png")

    bad = json.loads(open(pred_json).read())
    bad["annotations"][0]["segments_info"].append(seg(123, CAR))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"prediction .*pred.a\.png: segment id 123 is in segments_info"):
        evaluate_panoptic(gt_json, None, str(tmp_path / "bad.json"), tmp_path / "pred", progress=False)

    bad["annotations"][0]["image_id"] = 5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="no prediction for ground-truth image_id 1"):
        evaluate_panoptic(gt_json, None, str(tmp_path / "bad.json"), tmp_path / "pred", progress=False)

    Image.fromarray(pred.astype(np.uint8), mode="L").save(tmp_path / "gray.png")
    with pytest.raises(UserError, match="must be RGB"):
        read_panoptic_png(tmp_path / "gray.png")


# ----------------------------------------------------------------------------- cross-checks


def reference_pq(gt, gt_segs, pred, pred_segs) -> dict[int, tuple[float, int, int, int]]:
    """A plain per-segment-loop version of the rules, to check the vectorised one against."""
    gt_area = {s["id"]: int((gt == s["id"]).sum()) for s in gt_segs}
    pred_area = {s["id"]: int((pred == s["id"]).sum()) for s in pred_segs}
    crowd = {s["category_id"]: s["id"] for s in gt_segs if s["iscrowd"]}
    out: dict[int, list] = {}
    gt_hit, pred_hit = set(), set()
    for g in gt_segs:
        for p in pred_segs:
            if g["iscrowd"] or g["category_id"] != p["category_id"]:
                continue
            inter = int(((gt == g["id"]) & (pred == p["id"])).sum())
            void = int(((gt == 0) & (pred == p["id"])).sum())
            iou = inter / (pred_area[p["id"]] + gt_area[g["id"]] - inter - void)
            if iou > 0.5:
                entry = out.setdefault(g["category_id"], [0.0, 0, 0, 0])
                entry[0] += iou
                entry[1] += 1
                gt_hit.add(g["id"])
                pred_hit.add(p["id"])
    for g in gt_segs:
        if g["id"] not in gt_hit and not g["iscrowd"]:
            out.setdefault(g["category_id"], [0.0, 0, 0, 0])[3] += 1
    for p in pred_segs:
        if p["id"] in pred_hit:
            continue
        mask = pred == p["id"]
        ignored = int((mask & (gt == 0)).sum())
        if p["category_id"] in crowd:
            ignored += int((mask & (gt == crowd[p["category_id"]])).sum())
        if ignored / pred_area[p["id"]] <= 0.5:
            out.setdefault(p["category_id"], [0.0, 0, 0, 0])[2] += 1
    return {c: tuple(v) for c, v in out.items()}


def random_image(rng: np.random.Generator, h: int = 24, w: int = 32) -> tuple[np.ndarray, list[dict], np.ndarray, list]:
    """A blocky random panoptic ground truth and a noisy prediction of it."""

    def blocks(n: int) -> np.ndarray:
        small = rng.integers(0, n, size=(h // 4, w // 4))
        return np.kron(small, np.ones((4, 4), np.int64))

    gt_labels = blocks(8)
    gt = np.zeros((h, w), np.int64)
    gt_segs = []
    for k in range(1, 8):  # label 0 stays VOID
        if not (gt_labels == k).any():
            continue
        sid = int(rng.integers(1, 256**3))
        gt[gt_labels == k] = sid
        cat = int(rng.integers(1, 5))
        gt_segs.append(seg(sid, cat, crowd=int(rng.random() < 0.2), area=int((gt_labels == k).sum())))
    # prediction: the gt labels with random pixels and blocks replaced, ids and categories sometimes changed
    pred_labels = np.where(rng.random((h, w)) < 0.15, rng.integers(0, 10, (h, w)), gt_labels)
    pred_labels = np.where(blocks(3) == 0, blocks(10), pred_labels)
    cat_of = {k: int(rng.integers(1, 5)) for k in range(10)}
    for k, s in zip([k for k in range(1, 8) if (gt_labels == k).any()], gt_segs):
        if rng.random() < 0.8:
            cat_of[k] = s["category_id"]
    pred = np.zeros((h, w), np.int64)
    pred_segs = []
    for k in range(1, 10):
        if (pred_labels == k).any():
            sid = 1000 + 7 * k
            pred[pred_labels == k] = sid
            pred_segs.append(seg(sid, cat_of[k]))
    return gt, gt_segs, pred, pred_segs


def test_matches_per_segment_loop_on_random_images():
    rng = np.random.default_rng(1)
    checked = {"tp": 0, "fp": 0, "fn": 0}
    for _ in range(60):
        gt, gt_segs, pred, pred_segs = random_image(rng)
        stat = pq_compute_single(gt, gt_segs, pred, pred_segs, CATEGORIES)
        want = reference_pq(gt, gt_segs, pred, pred_segs)
        got = {c: (s.iou, s.tp, s.fp, s.fn) for c, s in stat.pq_per_cat.items()}
        assert got.keys() == want.keys()
        for c in want:
            assert got[c][0] == pytest.approx(want[c][0], abs=1e-12) and got[c][1:] == want[c][1:]
            checked["tp"] += want[c][1]
            checked["fp"] += want[c][2]
            checked["fn"] += want[c][3]
    assert min(checked.values()) > 10  # the random cases exercise every outcome


def test_matches_panopticapi_when_installed(tmp_path):
    evaluation = pytest.importorskip("panopticapi.evaluation")
    rng = np.random.default_rng(2)
    gt_imgs, pred_imgs = [], []
    for i in range(10):
        gt, gt_segs, pred, pred_segs = random_image(rng)
        gt_imgs.append((f"{i}.png", i, gt, gt_segs))
        pred_imgs.append((f"{i}.png", i, pred, pred_segs))
    gt_json = write_dataset(tmp_path, gt_imgs, "gt")
    pred_json = write_dataset(tmp_path, pred_imgs, "pred")
    ours = evaluate_panoptic(gt_json, None, pred_json, None, progress=False)

    with open(gt_json) as f:
        gt_data = json.load(f)
    with open(pred_json) as f:
        pred_data = json.load(f)
    pairs = list(zip(gt_data["annotations"], pred_data["annotations"]))
    categories = {c["id"]: c for c in gt_data["categories"]}
    # the single-process core, to avoid panopticapi's multiprocessing pool in a test
    stat = evaluation.pq_compute_single_core(0, pairs, str(tmp_path / "gt"), str(tmp_path / "pred"), categories)
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        theirs, per_class = stat.pq_average(categories, isthing=isthing)
        assert ours[name] == pytest.approx(theirs, abs=1e-12)
        if isthing is None:
            assert ours["per_class"].keys() == per_class.keys()
            for cat, metrics in per_class.items():
                assert ours["per_class"][cat] == pytest.approx(metrics, abs=1e-12)

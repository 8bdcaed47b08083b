"""COCO evaluation: ground truth fed back scores AP 100, every stat equals pycocotools called directly on the same
results json, files are written atomically, and the `python -m jaxseg.evaluate` CLI reports bad input in one line.

The direct reference follows detectron2's protocol: mask AP is computed from the results with their `bbox` removed,
so that the small/medium/large split uses the mask area (with the box present, pycocotools would use box area).
"""

import json
import math
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from cli_helpers import assert_user_error, run_module
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxseg.errors import UserError
from jaxseg.evaluation.coco import METRICS, COCOEvaluator, format_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "kite"}]
IMAGES = [(1, 120, 160), (2, 200, 180), (3, 100, 100), (4, 64, 64)]  # id, height, width; image 4 has no objects


# ------------------------------------------------------------------------------------------------ fixtures
def rle(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as jaxseg writes results."""
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def ellipse_mask(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def annotation(image_id: int, category_id: int, seg, h: int, w: int, crowd: int = 0) -> dict:
    """A GT annotation with area and bbox computed from its segmentation (polygon, RLE or uncompressed RLE)."""
    if isinstance(seg, list):
        r = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        r = mask_util.frPyObjects(seg, h, w)
    else:
        r = dict(seg, counts=seg["counts"].encode())
    return {"image_id": image_id, "category_id": category_id, "segmentation": seg, "iscrowd": crowd,
            "area": float(mask_util.area(r)), "bbox": [float(v) for v in mask_util.toBbox(r)]}


def make_gt() -> dict:
    """Four images, three non-contiguous categories, objects of every size, polygons and RLE, one crowd region,
    masks touching the image border, and an image without annotations."""
    anns = [
        annotation(1, 1, [[10, 10, 70, 12, 68, 60, 12, 58]], 120, 160),              # medium polygon
        annotation(1, 3, rle(box_mask(120, 160, 90, 120, 0, 30)), 120, 160),         # small, left+bottom border
        annotation(1, 7, [[100, 0, 130, 0, 115, 25]], 120, 160),                     # small triangle at the top
        annotation(1, 1, uncompressed_rle(box_mask(120, 160, 40, 100, 130, 160)), 120, 160, crowd=1),
        annotation(2, 1, rle(box_mask(200, 180, 20, 140, 30, 140)), 200, 180),       # large
        annotation(2, 1, rle(ellipse_mask(200, 180, 120, 60, 25, 30)), 200, 180),   # medium, overlaps the large
        annotation(2, 7, [[140, 150, 180, 150, 180, 200, 140, 200]], 200, 180),     # medium, right+bottom border
        annotation(2, 3, rle(ellipse_mask(200, 180, 60, 150, 20, 12)), 200, 180),   # medium ellipse
        annotation(3, 3, rle(np.ones((100, 100), bool)), 100, 100),                  # large, the whole image
        annotation(3, 1, rle(ellipse_mask(100, 100, 50, 50, 8, 10)), 100, 100),     # small
    ]
    for i, a in enumerate(anns, start=1):
        a["id"] = i
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i:012d}.jpg"} for i, h, w in IMAGES]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def gt_as_predictions(gt: dict) -> list[dict]:
    """Every non-crowd object as a detection: its box, score 1, its mask as compressed RLE."""
    api = COCO()
    api.dataset = json.loads(json.dumps(gt))
    api.createIndex()
    out = []
    for a in api.dataset["annotations"]:
        if a["iscrowd"]:
            continue
        r = api.annToRLE(a)
        counts = r["counts"] if isinstance(r["counts"], str) else r["counts"].decode("ascii")
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                    "segmentation": {"size": [int(s) for s in r["size"]], "counts": counts}})
    return out


def perturbed_predictions(gt: dict, seed: int = 0) -> list[dict]:
    """Shifted masks, jittered boxes, random scores, missed objects, duplicates and false positives."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    out = []
    for p in gt_as_predictions(gt):
        if rng.random() < 0.15:
            continue
        h, w = sizes[p["image_id"]]
        m = mask_util.decode(dict(p["segmentation"], counts=p["segmentation"]["counts"].encode()))
        for _ in range(1 + (rng.random() < 0.3)):  # some duplicates
            shifted = np.roll(m, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            box = [round(float(v + rng.uniform(-3, 3)), 2) for v in p["bbox"]]
            out.append(dict(p, bbox=box, score=round(float(rng.uniform(0.05, 1)), 4), segmentation=rle(shifted)))
    for _ in range(8):  # false positives, including on the image without objects
        image_id, h, w = IMAGES[rng.integers(len(IMAGES))]
        y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        y1, x1 = int(rng.integers(y0 + 5, h + 1)), int(rng.integers(x0 + 5, w + 1))
        out.append({"image_id": image_id, "category_id": int(rng.choice([1, 3, 7])),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": round(float(rng.uniform(0, 0.9)), 4),
                    "segmentation": rle(box_mask(h, w, y0, y1, x0, x1))})
    return out


@pytest.fixture
def gt_path(tmp_path) -> str:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(make_gt()))
    return str(path)


def write_results(tmp_path, records, name="results.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def direct_cocoeval(gt_path: str, res_path: str, task: str, img_ids=None) -> COCOeval:
    """pycocotools alone on the files, as detectron2 calls it (mask AP without the boxes)."""
    gt = COCO(gt_path)
    if task == "bbox":
        dt = gt.loadRes(res_path)
    else:
        with open(res_path) as f:
            dets = json.load(f)
        for d in dets:
            d.pop("bbox", None)
        dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, task)
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def evaluate_file(gt_path, res_path, **kw):
    ev = COCOEvaluator(gt_path, **kw)
    with open(res_path) as f:
        ev.process(json.load(f))
    return ev, ev.evaluate()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_equals_direct(ours: COCOEvaluator, metrics: dict, gt_path: str, res_path: str, img_ids=None) -> None:
    for task in ("bbox", "segm"):
        ref = direct_cocoeval(gt_path, res_path, task, img_ids)
        assert np.array_equal(ours.stats[task], np.asarray(ref.stats)), (task, ours.stats[task], ref.stats)
        for i, m in enumerate(METRICS):
            want = ref.stats[i] * 100 if ref.stats[i] >= 0 else float("nan")
            assert same(metrics[task][m], want), (task, m, metrics[task][m], want)
        for k, cat in enumerate(CATEGORIES):
            p = ref.eval["precision"][:, :, k, 0, -1]
            p = p[p > -1]
            want = float(np.mean(p) * 100) if p.size else float("nan")
            assert same(metrics[task][f"AP-{cat['name']}"], want), (task, cat, want)


# ------------------------------------------------------------------------------------------------ accuracy
def test_ground_truth_as_predictions_scores_100(tmp_path, gt_path):
    res = write_results(tmp_path, gt_as_predictions(make_gt()))
    _, metrics = evaluate_file(gt_path, res)
    for task in ("bbox", "segm"):
        for key in (*METRICS, "AP-cat", "AP-dog", "AP-kite"):
            assert metrics[task][key] == pytest.approx(100.0), (task, key, metrics[task])


def test_every_stat_equals_pycocotools_directly(tmp_path, gt_path, capsys):
    res = write_results(tmp_path, perturbed_predictions(make_gt()))
    ours, metrics = evaluate_file(gt_path, res)
    out = capsys.readouterr().out
    assert_equals_direct(ours, metrics, gt_path, res)
    for task in ("bbox", "segm"):
        assert 5 < metrics[task]["AP"] < 95 and set(metrics[task]) == {*METRICS, "AP-cat", "AP-dog", "AP-kite"}
        assert f"Evaluation results for {task}:" in out and f"Per-category {task} AP:" in out
    assert metrics["segm"] != metrics["bbox"]


def test_restricted_to_processed_images(tmp_path, gt_path):
    """With image_ids, only those images count (detectron2 evaluating the inputs it saw)."""
    records = [r for r in perturbed_predictions(make_gt(), seed=1) if r["image_id"] in (2, 4)]
    res = write_results(tmp_path, records)
    ours = COCOEvaluator(gt_path)
    ours.process([r for r in records if r["image_id"] == 2], image_ids=[2])
    ours.process([r for r in records if r["image_id"] == 4], image_ids=[4])
    assert_equals_direct(ours, ours.evaluate(), gt_path, res, img_ids=[2, 4])


def test_gt_given_as_coco_object_and_bbox_only(tmp_path, gt_path):
    records = perturbed_predictions(make_gt(), seed=2)
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in records]
    ev = COCOEvaluator(COCO(gt_path))
    ev.process(boxes_only)
    metrics = ev.evaluate()
    assert list(metrics) == ["bbox"]
    ref = direct_cocoeval(gt_path, write_results(tmp_path, boxes_only), "bbox")
    assert np.array_equal(ev.stats["bbox"], ref.stats)


def test_no_predictions_warns_and_gives_nan(tmp_path, gt_path, caplog):
    ev = COCOEvaluator(gt_path, output_dir=tmp_path / "out")
    ev.process([], image_ids=[1, 2])
    with caplog.at_level("WARNING"):
        metrics = ev.evaluate()
    assert "no predictions" in caplog.text
    assert list(metrics) == ["bbox"] and all(math.isnan(v) for v in metrics["bbox"].values())
    assert json.loads((tmp_path / "out" / "coco_instances_results.json").read_text()) == []
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"bbox": {m: None for m in METRICS}}


# ------------------------------------------------------------------------------------------------ files
def test_output_files(tmp_path, gt_path):
    records = perturbed_predictions(make_gt())
    out = tmp_path / "inference"
    ev = COCOEvaluator(gt_path, output_dir=str(out))
    ev.process(records[:10])
    ev.process(records[10:])
    metrics = ev.evaluate()
    assert json.loads((out / "coco_instances_results.json").read_text()) == records  # unchanged by loadRes
    saved = json.loads((out / "metrics.json").read_text())
    assert saved.keys() == {"bbox", "segm"}
    for task in saved:
        assert saved[task] == {k: (None if math.isnan(v) else v) for k, v in metrics[task].items()}
    assert sorted(os.listdir(out)) == ["coco_instances_results.json", "metrics.json"]


def test_interrupted_write_leaves_no_results_file(tmp_path, gt_path, monkeypatch):
    out = tmp_path / "inference"
    ev = COCOEvaluator(gt_path, output_dir=str(out))
    ev.process(gt_as_predictions(make_gt()))

    def interrupted(obj, f, *a, **k):
        f.write('[{"image_id": 1, "categ')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate()
    assert os.listdir(out) == []  # neither the results file nor a temp file


def test_interrupted_write_keeps_previous_results(tmp_path, gt_path, monkeypatch):
    out = tmp_path / "inference"
    ev = COCOEvaluator(gt_path, output_dir=str(out))
    ev.process(gt_as_predictions(make_gt()))
    ev.evaluate()
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    ev.reset()
    ev.process(perturbed_predictions(make_gt()))
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ev.evaluate()
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("record, needle", [
    ({"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, "image_id 99"),
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}, "category_id 2"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}, "bbox"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, "score"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5,
      "segmentation": [[0, 0, 5, 0, 5, 5]]}, "compressed RLE"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5,
      "segmentation": rle(np.ones((10, 10), bool))}, "size [10, 10]"),
])
def test_bad_records(gt_path, record, needle):
    ev = COCOEvaluator(gt_path)
    with pytest.raises(UserError, match=r"result 0 .*" + needle.replace("[", r"\[")):
        ev.process([record])


def test_bad_arguments(tmp_path, gt_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        COCOEvaluator(str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="task 'keypoints'"):
        COCOEvaluator(gt_path, tasks=["bbox", "keypoints"])
    with pytest.raises(UserError, match="backend"):
        COCOEvaluator(gt_path, backend="detectron2")
    ev = COCOEvaluator(gt_path, tasks=["segm"])
    ev.process([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(UserError, match="no 'segmentation'"):
        ev.evaluate()
    no_masks = make_gt()
    del no_masks["annotations"][2]["segmentation"]
    ev = COCOEvaluator(no_masks)
    ev.process(gt_as_predictions(make_gt()))
    with pytest.raises(UserError, match=r"annotations\[2\] has no 'segmentation'"):
        ev.evaluate()
    with pytest.raises(UserError, match=r"annotations\[0\] has no 'area'"):
        COCOEvaluator({**make_gt(), "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]})
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(UserError, match="pip install faster-coco-eval"):
        COCOEvaluator(gt_path, backend="faster_coco_eval")
    assert COCOEvaluator(gt_path, backend="auto")._backend == "pycocotools"


def test_table_layout():
    text = format_results("bbox", {"AP": 12.3456, "AP50": 50.0, "AP75": float("nan"), "APs": 1.0, "APm": 2.0,
                                   "APl": 3.0, "AP-cat": 10.0, "AP-dog": 20.0, "AP-kite": float("nan"), "AP-x": 0.0})
    lines = text.splitlines()
    assert lines[0] == "Evaluation results for bbox:"
    assert lines[1] == "|   AP   |  AP50  | AP75 |  APs  |  APm  |  APl  |"
    assert lines[3] == "| 12.346 | 50.000 | nan  | 1.000 | 2.000 | 3.000 |"
    assert lines[4] == "Per-category bbox AP:"
    assert lines[5] == "| category | AP     | category | AP     | category | AP  |"
    assert lines[7] == "| cat      | 10.000 | dog      | 20.000 | kite     | nan |"
    assert lines[8].startswith("| x        | 0.000  |")


# ------------------------------------------------------------------------------------------------ backends
def test_faster_coco_eval_gives_the_same_stats(tmp_path, gt_path):
    pytest.importorskip("faster_coco_eval", reason="optional backend faster-coco-eval is not installed")
    res = write_results(tmp_path, perturbed_predictions(make_gt(), seed=3))
    ref, ref_metrics = evaluate_file(gt_path, res, backend="pycocotools")
    fast, fast_metrics = evaluate_file(gt_path, res, backend="faster_coco_eval")
    assert COCOEvaluator(gt_path, backend="auto")._backend == "faster_coco_eval"
    from faster_coco_eval import COCO as FasterCOCO

    given = COCOEvaluator(FasterCOCO(gt_path), backend="faster_coco_eval")  # its own COCO object, reused
    with open(res) as f:
        given.process(json.load(f))
    given.evaluate()
    assert all(np.array_equal(given.stats[t], fast.stats[t]) for t in ("bbox", "segm"))
    for task in ("bbox", "segm"):
        np.testing.assert_allclose(fast.stats[task], ref.stats[task], rtol=0, atol=1e-15)  # summation order
        for k, v in ref_metrics[task].items():
            assert fast_metrics[task][k] == pytest.approx(v, abs=1e-12, nan_ok=True), (task, k)


# ------------------------------------------------------------------------------------------------ CLI
def run_cli(*args):
    return run_module("jaxseg.evaluate", *args, timeout=300)


def test_cli_prints_tables_and_writes_stats(tmp_path, gt_path):
    res_path = write_results(tmp_path, perturbed_predictions(make_gt()))
    out = tmp_path / "stats.json"
    res = run_cli(gt_path, res_path, "--out", str(out))
    assert res.returncode == 0, res.stderr
    for task in ("bbox", "segm"):
        assert f"Evaluation results for {task}:" in res.stdout and f"Per-category {task} AP:" in res.stdout
    ours, metrics = evaluate_file(gt_path, res_path)
    assert json.loads(out.read_text()) == json.loads(json.dumps(metrics).replace("NaN", "null"))
    assert sorted(os.listdir(tmp_path)) == ["gt.json", "results.json", "stats.json"]


def test_cli_bad_input(tmp_path, gt_path):
    good = write_results(tmp_path, gt_as_predictions(make_gt()))
    assert_user_error(run_cli(str(tmp_path / "nope.json"), good), "nope.json", "not found")
    assert_user_error(run_cli(gt_path, str(tmp_path / "missing.json")), "missing.json", "not found")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,')
    assert_user_error(run_cli(gt_path, str(broken)), "broken.json", "not valid JSON")
    assert_user_error(run_cli(good, good), "results.json", "not a COCO annotations file")
    unknown_image = write_results(tmp_path, [dict(gt_as_predictions(make_gt())[0], image_id=4242)], "u_img.json")
    assert_user_error(run_cli(gt_path, unknown_image), "u_img.json", "image_id 4242")
    unknown_cat = write_results(tmp_path, [dict(gt_as_predictions(make_gt())[0], category_id=0)], "u_cat.json")
    assert_user_error(run_cli(gt_path, unknown_cat), "u_cat.json", "category_id 0")
    res = run_cli(gt_path, good, "--out", str(tmp_path / "no_dir" / "stats.json"))
    assert_user_error(res, "no_dir", "does not exist")
    assert not (tmp_path / "no_dir").exists()

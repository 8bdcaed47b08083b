"""COCO evaluation time: jaxseg's COCOEvaluator against pycocotools' COCOeval called directly, in one run.

    python benchmarks/eval_coco.py [--images 5000] [--size 256] [--categories 10] [--runs 1] [--json out.json]

Synthesizes a COCO ground truth of `--images` images (`--size` square, 1 to 6 random polygon shapes each, of every
COCO size class, 1% crowd) and noisy detections (moved and reshaped copies of most objects, some with the wrong
class, plus false positives), writes both as JSON, then scores bbox and segm from the files three ways:
pycocotools directly (mask AP without the boxes, as detectron2 does), jaxseg's evaluator with the pycocotools
backend, and, when installed, with the faster_coco_eval backend. Every side starts from the two files and ends
with summarized stats; all must agree (pycocotools backend: exactly). Last line:
`RESULT images=… pycocotools_s=… jaxseg_s=… ratio=… [jaxseg_faster_s=… ratio_faster=…]`, ratio = jaxseg / direct.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxseg.evaluation.coco import COCOEvaluator, load_results  # noqa: E402

TASKS = ("bbox", "segm")


# ---------------------------------------------------------------------------------------------- data
def random_polygon(rng: np.random.Generator, size: int, cx: float, cy: float, r: float) -> list[float]:
    """An ellipse, rectangle or triangle around (cx, cy) of radius r, as a flat COCO polygon clipped to the image."""
    kind = rng.integers(3)
    if kind == 0:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ry = r * rng.uniform(0.5, 1.0)
        pts = np.stack([cx + r * np.cos(t), cy + ry * np.sin(t)], 1)
    elif kind == 1:
        w, h = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        pts = np.array([[cx - w, cy - h], [cx + w, cy - h], [cx + w, cy + h], [cx - w, cy + h]])
    else:
        a = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
        pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
    return np.clip(pts, 0, size).round(2).ravel().tolist()


def perturb(rng: np.random.Generator, poly: list[float], r: float, size: int) -> list[float]:
    """A detector's version of an object: the polygon moved, rescaled and its vertices jittered."""
    pts = np.asarray(poly).reshape(-1, 2)
    centre = pts.mean(0)
    pts = centre + rng.normal(0, 0.08 * r, 2) + (pts - centre) * rng.uniform(0.85, 1.15)
    pts = pts + rng.normal(0, 0.04 * r, pts.shape)
    return np.clip(pts, 0, size).round(2).ravel().tolist()


def rle_of(poly: list[float], size: int) -> dict:
    """Compressed RLE (str counts) of one polygon."""
    r = mask_util.frPyObjects([poly], size, size)[0]
    return {"size": [size, size], "counts": r["counts"].decode("ascii")}


def make_shape(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    """Centre and radius: radii from 3 to size/2.5 cover small, medium and large COCO objects."""
    r = float(np.exp(rng.uniform(np.log(3), np.log(size / 2.5))))
    return float(rng.uniform(0, size)), float(rng.uniform(0, size)), r


def synthesize(n_images: int, size: int, n_cats: int, seed: int) -> tuple[dict, list[dict]]:
    """The ground truth dataset and the detections."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": size, "width": size, "file_name": f"{i + 1:012d}.jpg"} for i in range(n_images)]
    cats = [{"id": 2 * c + 1, "name": f"class{c}"} for c in range(n_cats)]  # non-contiguous ids, like COCO
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(1, 7)):
            cx, cy, r = make_shape(rng, size)
            cat = cats[rng.integers(n_cats)]["id"]
            poly = random_polygon(rng, size, cx, cy, r)
            rle = mask_util.frPyObjects([poly], size, size)[0]
            if mask_util.area(rle) < 1:
                continue
            crowd = int(rng.random() < 0.01)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "iscrowd": crowd,
                         "segmentation": rle_of(poly, size) if crowd else [poly],
                         "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist()})
            if crowd or rng.random() < 0.15:
                continue
            label = cat if rng.random() > 0.05 else cats[rng.integers(n_cats)]["id"]
            dets.append(detection(rng, img["id"], label, perturb(rng, poly, r, size), size))
        for _ in range(rng.integers(0, 4)):  # false positives
            poly = random_polygon(rng, size, *make_shape(rng, size))
            dets.append(detection(rng, img["id"], cats[rng.integers(n_cats)]["id"], poly, size, score_max=0.7))
    return {"images": images, "annotations": anns, "categories": cats}, dets


def detection(rng: np.random.Generator, image_id: int, cat: int, poly: list[float], size: int,
              score_max: float = 1.0) -> dict:
    """A results record as jaxseg writes it: XYWH box (the mask's, jittered), score, RLE mask."""
    seg = rle_of(poly, size)
    x, y, w, h = mask_util.toBbox(dict(seg, counts=seg["counts"].encode())).tolist()
    box = [round(v + float(rng.normal(0, 1.5)), 3) for v in (x, y)] + [round(max(w, 1.0), 3), round(max(h, 1.0), 3)]
    score = round(float(rng.uniform(0.01, score_max)), 5)
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score, "segmentation": seg}


# ---------------------------------------------------------------------------------------------- the contenders
def pycocotools_direct(gt_path: str, res_path: str) -> dict[str, np.ndarray]:
    """COCO + loadRes + COCOeval from the files, mask AP on the records without boxes (detectron2's protocol)."""
    gt = COCO(gt_path)
    with open(res_path) as f:
        dets = json.load(f)
    stats = {}
    for task in TASKS:  # loadRes writes into the records: each task gets its own copies
        dt = gt.loadRes([{k: v for k, v in d.items() if task == "bbox" or k != "bbox"} for d in dets])
        ev = COCOeval(gt, dt, task)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats[task] = np.asarray(ev.stats)
    return stats


def jaxseg_eval(gt_path: str, res_path: str, backend: str) -> dict[str, np.ndarray]:
    """What `python -m jaxseg.evaluate GT RESULTS --backend B` runs."""
    ev = COCOEvaluator(gt_path, tasks=TASKS, backend=backend)
    ev.process(load_results(res_path))
    ev.evaluate()
    return ev.stats


def timed(fn, *args) -> tuple[float, float, dict]:
    """Wall and CPU seconds (all threads) of one call; its console output (progress, tables) is discarded."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        return time.perf_counter() - t0, time.process_time() - c0, out


# ---------------------------------------------------------------------------------------------- main
def write_pair(d: str, name: str, gt: dict, dets: list[dict]) -> tuple[str, str]:
    """The ground truth and the results as JSON files in d."""
    paths = os.path.join(d, f"{name}_gt.json"), os.path.join(d, f"{name}_results.json")
    for path, obj in zip(paths, (gt, dets)):
        with open(path, "w") as f:
            json.dump(obj, f)
    return paths


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--categories", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=1, help="timed runs of each contender, alternated; medians reported")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    t0 = time.perf_counter()
    gt, dets = synthesize(args.images, args.size, args.categories, args.seed)
    print(f"synthesized {len(gt['images'])} images, {len(gt['annotations'])} objects, {len(dets)} detections "
          f"({time.perf_counter() - t0:.1f}s); load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus")
    try:
        import faster_coco_eval
        import faster_coco_eval.core.faster_eval_api  # noqa: F401  (imported before timing, like pycocotools)

        backends = ["pycocotools", "faster_coco_eval"]
        print(f"faster-coco-eval {faster_coco_eval.__version__} installed: timing both backends")
    except ImportError:
        backends = ["pycocotools"]
        print("faster-coco-eval not installed: timing the pycocotools backend only")
    contenders = {"pycocotools": (pycocotools_direct,)} | {f"jaxseg[{b}]": (jaxseg_eval, b) for b in backends}
    with tempfile.TemporaryDirectory() as d:
        gt_path, res_path = write_pair(d, "warmup", *synthesize(20, args.size, args.categories, args.seed + 1))
        for fn, *extra in contenders.values():  # untimed: first-call costs (lazy imports, caches) out of the way
            timed(fn, gt_path, res_path, *extra)
        gt_path, res_path = write_pair(d, "bench", gt, dets)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        stats: dict[str, dict] = {}
        names = list(contenders)
        for run in range(args.runs):  # rotate the order so that no contender always goes first
            for name in names[run % len(names):] + names[:run % len(names)]:
                fn, *extra = contenders[name]
                t, c, stats[name] = timed(fn, gt_path, res_path, *extra)
                times[name].append(t)
                cpu[name].append(c)
    check_agreement(stats)
    report(args, times, cpu, stats)
    return 0


def check_agreement(stats: dict[str, dict]) -> None:
    """The pycocotools backend must equal the direct call exactly; faster_coco_eval to summation order."""
    ref = stats["pycocotools"]
    for name, s in stats.items():
        for task in TASKS:
            diff = float(np.max(np.abs(s[task] - ref[task])))
            exact = "pycocotools]" in name or name == "pycocotools"
            if (exact and diff != 0) or diff > 1e-12:
                raise SystemExit(f"{name} {task} stats differ from pycocotools by {diff}")


def report(args: argparse.Namespace, times: dict[str, list[float]], cpu: dict[str, list[float]],
           stats: dict[str, dict]) -> None:
    """A table of medians and ratios, the AP figures, the RESULT line and the optional JSON."""
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ref = med["pycocotools"]
    print(f"\nbbox + segm from the two JSON files, median of {args.runs} run(s); lower is better; "
          f"load average now {os.getloadavg()[0]:.2f}")
    print(f"{'':28s}{'wall s':>10s}{'ratio':>8s}{'cpu s':>10s}{'ratio':>8s}")
    for name, t in med.items():
        c = med_cpu[name]
        print(f"{name:28s}{t:10.2f}{t / ref:8.3f}{c:10.2f}{c / med_cpu['pycocotools']:8.3f}")
    for task in TASKS:
        print(f"{task}: AP {stats['pycocotools'][task][0] * 100:.3f}  AP50 {stats['pycocotools'][task][1] * 100:.3f}"
              "  (same for every contender)")
    fig = {"images": args.images, "pycocotools_s": ref, "jaxseg_s": med["jaxseg[pycocotools]"],
           "ratio": med["jaxseg[pycocotools]"] / ref}
    line = (f"RESULT images={args.images} pycocotools_s={ref:.2f} jaxseg_s={fig['jaxseg_s']:.2f} "
            f"ratio={fig['ratio']:.3f}")
    if "jaxseg[faster_coco_eval]" in med:
        fig["jaxseg_faster_s"] = med["jaxseg[faster_coco_eval]"]
        fig["ratio_faster"] = fig["jaxseg_faster_s"] / ref
        line += f" jaxseg_faster_s={fig['jaxseg_faster_s']:.2f} ratio_faster={fig['ratio_faster']:.3f}"
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig | {"wall_s": times, "cpu_s": cpu}, f, indent=1)
    print(line)


if __name__ == "__main__":
    sys.exit(main())

"""Training-data throughput: images/s the jaxseg loader delivers in the training batch layout.

Two settings, each timed as a plain single-threaded loop (``TrainLoader.load_batch`` step after step:
the same reads, augmentations, masks and collation, no prefetch) and as the background pipeline
(DATALOADER.NUM_WORKERS threads, and worker processes), in one run, alternating:

* ``shapes``: the built-in synthetic shapes train split (128x128 PNGs, ``jaxseg.data.shapes.prepare``;
  a synthetic COCO json of the same kind when that module is missing), quickstart-like settings:
  MIN_SIZE_TRAIN (96..160), MAX_SIZE_TRAIN 256, 16 images per batch;
* ``coco``: a synthetic COCO of 640x480-class JPEGs with ~8 polygon instances each (INPUT.MASK_FORMAT polygon),
  detectron2's COCO settings: MIN_SIZE_TRAIN (640..800), MAX_SIZE_TRAIN 1333, buckets 800x1344 and
  1344x800, 8 images per host batch.

Both use the layout's default G=100 instances; shapes (RLE masks for occluded objects) INPUT.MASK_FORMAT
bitmask, full-image masks. The last line reads
``RESULT shapes_ref_ips=... shapes_ips=... shapes_ratio=... coco_ref_ips=... coco_ips=... coco_ratio=...``
with ``*_ips`` the best pipeline figure and ``ratio`` pipeline / single-threaded loop (higher is better).

    python benchmarks/data_throughput.py [--workers N] [--batches 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxseg.config import get_cfg  # noqa: E402
from jaxseg.data.coco import load_coco_json, write_coco_json  # noqa: E402
from jaxseg.data.input_spec import InputSpec  # noqa: E402
from jaxseg.data.loaders import TrainLoader, build_train_loader  # noqa: E402
from jaxseg.models.rcnn.rcnn import mask_target_spec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pipeline workers (all cores)")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per measurement (12)")
    ap.add_argument("--coco-images", type=int, default=48, help="images in the synthetic COCO-like set (48)")
    ap.add_argument("--only", choices=("shapes", "coco"), help="run one setting")
    ap.add_argument("--no-processes", action="store_true", help="skip the worker-process pipeline")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Data


def shapes_records(tmp: Path) -> tuple[list[dict], str]:
    """The shapes train split (generated on first use), or a synthetic stand-in of 128x128 PNGs."""
    try:
        from jaxseg.data import shapes
    except ImportError:
        return synthetic_coco(tmp / "shapes", 256, [(128, 128)], "PNG"), "synthetic 128x128 PNG (no shapes module)"
    json_file, image_root = shapes.prepare("train")
    return load_coco_json(json_file, image_root), f"shapes train ({json_file})"


def synthetic_coco(root: Path, count: int, sizes: list[tuple[int, int]], fmt: str) -> list[dict]:
    """``count`` smooth, noisy images of the given (h, w) sizes with ~7 polygons and one RLE each."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        h, w = sizes[index % len(sizes)]
        name = f"{index:06d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        options = {"quality": 90} if fmt == "JPEG" else {}
        _synthetic_image(rng, h, w).save(root / "images" / name, format=fmt, **options)
        images.append({"id": index + 1, "file_name": name, "height": h, "width": w})
        for _ in range(int(rng.integers(4, 11))):
            annotations.append(_synthetic_annotation(rng, len(annotations) + 1, index + 1, h, w, rle=False))
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 81)]
    write_coco_json(root / "instances.json", images, annotations, categories)
    return load_coco_json(root / "instances.json", root / "images")


def _synthetic_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Bilinear-upsampled colour blotches plus pixel noise: JPEG sizes like photographs'."""
    coarse = Image.fromarray(rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR), np.int16)
    noisy = smooth + rng.integers(-20, 21, smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _synthetic_annotation(rng: np.random.Generator, ann_id: int, image_id: int, h: int, w: int, rle: bool) -> dict:
    """A star-shaped polygon of 12-40 vertices (or its RLE) with its box."""
    n = int(rng.integers(12, 41))
    radius = rng.uniform(0.05, 0.3) * min(h, w)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    segm: Any = [points.ravel().tolist()]
    if rle:
        encoded = mask_util.merge(mask_util.frPyObjects(segm, h, w))
        segm = {"size": [h, w], "counts": encoded["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": int(rng.integers(1, 81)), "iscrowd": 0,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": 1.0, "segmentation": segm}


# ----------------------------------------------------------------------------------------------
# Settings and timing


def make_cfg(setting: str):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    if setting == "shapes":  # shapes has RLE masks (occluded objects): detectron2's bitmask format
        cfg.INPUT.MASK_FORMAT = "bitmask"
        cfg.INPUT.MIN_SIZE_TRAIN = (96, 112, 128, 144, 160)
        cfg.INPUT.MAX_SIZE_TRAIN = 256
        cfg.SOLVER.IMS_PER_BATCH = 16
    else:
        cfg.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
        cfg.INPUT.MAX_SIZE_TRAIN = 1333
        cfg.SOLVER.IMS_PER_BATCH = 8
    return cfg


def time_reference(loader: TrainLoader, start: int, batches: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``batches`` batches built one after another in this thread."""
    begin, cpu = time.perf_counter(), time.process_time()
    for step in range(start, start + batches):
        loader.load_batch(step)
    return time.perf_counter() - begin, time.process_time() - cpu


def time_pipeline(loader: TrainLoader, start: int, batches: int) -> tuple[float, float]:
    """(wall, CPU of this process) seconds from the first batch (pool started, primed) to ``batches`` more."""
    with loader.batches(start) as iterator:
        next(iterator)
        begin, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(iterator)
        return time.perf_counter() - begin, time.process_time() - cpu


def run_setting(setting: str, records: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """Alternate reference and pipeline timings on fresh steps; images/s for each mode."""
    cfg = make_cfg(setting)
    modes = {"single-thread loop": dict(num_workers=0),
             f"threads x{args.workers}": dict(num_workers=args.workers)}
    if not args.no_processes:
        modes[f"processes x{args.workers}"] = dict(num_workers=args.workers, use_processes=True)
    specs = InputSpec.from_config(cfg, 32), mask_target_spec(cfg)  # Mask R-CNN's
    loaders = {name: build_train_loader(cfg, records, *specs, seed=0, process_index=0, process_count=1, **kw)
               for name, kw in modes.items()}
    batch = cfg.SOLVER.IMS_PER_BATCH
    loaders["single-thread loop"].load_batch(0)  # warm caches (file system, imports)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    step = 1
    for _ in range(2):
        for name, loader in loaders.items():
            timer = time_reference if name == "single-thread loop" else time_pipeline
            timings[name].append(timer(loader, step, args.batches))
            step += args.batches + 1
    images = batch * args.batches
    best = {name: min(values) for name, values in timings.items()}
    sample = loaders["single-thread loop"].load_batch(0)
    return {"images_per_s": {name: images / wall for name, (wall, _) in best.items()},
            "cpu_ms_per_image": {name: 1000 * cpu / images for name, (_, cpu) in best.items()
                                 if "processes" not in name},
            "buckets": loaders["single-thread loop"].buckets, "batch": batch,
            "batch_mb": sum(v.nbytes for v in sample.values()) / 2**20, "images": len(records)}


def report(results: dict[str, dict[str, Any]], sources: dict[str, str]) -> dict[str, float]:
    """Print the table and return the RESULT figures."""
    print(f"\n{'setting':8} {'mode':22} {'images/s':>9} {'vs loop':>8} {'CPU ms/img':>11}")
    figures: dict[str, float] = {}
    for setting, res in results.items():
        ips, cpu = res["images_per_s"], res["cpu_ms_per_image"]
        ref = ips["single-thread loop"]
        for name, value in ips.items():
            cpu_text = f"{cpu[name]:11.1f}" if name in cpu else f"{'(workers)':>11}"
            print(f"{setting:8} {name:22} {value:9.1f} {value / ref:7.2f}x {cpu_text}")
        best = max(v for k, v in ips.items() if k != "single-thread loop")
        figures.update({f"{setting}_ref_ips": ref, f"{setting}_ips": best, f"{setting}_ratio": best / ref})
        print(f"{'':8} {sources[setting]}; {res['images']} images, batch {res['batch']}, "
              f"buckets {res['buckets']}, {res['batch_mb']:.1f} MiB per batch")
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    print(f"cores {os.cpu_count()}, load average {load:.2f}, workers {args.workers}, {args.batches} batches timed")
    results, sources = {}, {}
    with tempfile.TemporaryDirectory(prefix="jaxseg_data_bench_") as tmp:
        if args.only in (None, "shapes"):
            records, sources["shapes"] = shapes_records(Path(tmp))
            results["shapes"] = run_setting("shapes", records, args)
        if args.only in (None, "coco"):
            sizes = [(480, 640), (640, 480), (427, 640), (640, 427), (500, 375), (375, 500)]
            records = synthetic_coco(Path(tmp) / "coco", args.coco_images, sizes, "JPEG")
            sources["coco"] = "synthetic COCO-like JPEGs (427..640 px sides)"
            results["coco"] = run_setting("coco", records, args)
    figures = report(results, sources)
    print(f"load average now {os.getloadavg()[0]:.2f} (figures from a loaded machine understate the pipeline)")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "load_average": load}, indent=1))
    print("RESULT " + " ".join(f"{k}={v:.3f}" if "ratio" in k else f"{k}={v:.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

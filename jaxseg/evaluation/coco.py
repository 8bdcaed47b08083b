"""COCO box and mask AP of jaxseg predictions, computed by pycocotools (or faster-coco-eval when asked).

Follows detectron2's `COCOEvaluator`: predictions arrive as COCO results records (what
`jaxseg.main.instances_to_coco_json` makes), are saved as `coco_instances_results.json`, and are scored by
the official `COCOeval`; mask AP is computed with the records' boxes removed, so that the small/medium/large
split uses the mask area and not the box area. AP numbers are returned in percent, NaN where pycocotools
reports -1 (nothing to measure), with one `AP-<class name>` entry per category.

    evaluator = COCOEvaluator("instances_val2017.json", output_dir="output/inference")
    for image_id, inst in ...:
        evaluator.process(instances_to_coco_json(inst, image_id, name, to_dataset_id), image_ids=[image_id])
    metrics = evaluator.evaluate()   # {"bbox": {"AP": .., "AP50": .., ...}, "segm": {...}}

In a multi-process JAX run (jax.distributed) every process feeds its own images; `evaluate` (a collective:
every process calls it) gathers all records on process 0, which alone scores them and writes the files,
and every process returns process 0's metrics.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxseg.engine.sharding import all_gather_json, broadcast_json, is_main_process, process_info
from jaxseg.errors import UserError
from jaxseg.fileio import write_json_atomic

logger = logging.getLogger(__name__)

TASKS = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster_coco_eval", "auto")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six entries of COCOeval.stats
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "metrics.json"


# ---------------------------------------------------------------------------------------------- reading input
def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} file is a directory: {path}") from None
    except PermissionError:
        raise UserError(f"{what} file is not readable: {path}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} file {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not valid JSON: not UTF-8 text") from None


def check_coco_dataset(dataset: Any, name: str) -> None:
    """Require the parts of a COCO instances dataset that evaluation reads; else a UserError naming `name`."""
    if not isinstance(dataset, dict):
        raise UserError(f"{name} is not a COCO annotations file: expected a JSON object, got {type(dataset).__name__}")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise UserError(f"{name} is not a COCO annotations file: no '{key}' list")
    for key, entries, fields in (("images", dataset["images"], ("id",)),
                                 ("categories", dataset["categories"], ("id", "name")),
                                 ("annotations", dataset.get("annotations", []),
                                  ("image_id", "category_id", "bbox", "area"))):
        for i, entry in enumerate(entries):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise UserError(f"{name}: {key}[{i}] has no '{missing[0]}'")


def load_results(path: str | os.PathLike) -> list[dict]:
    """Read a COCO results file (a JSON list of detection records)."""
    records = read_json(path, "results")
    if not isinstance(records, list):
        raise UserError(f"results file {path} is not a COCO results file: expected a JSON list of detections, "
                        f"got {type(records).__name__}")
    return records


def pycocotools_api(dataset: dict):
    """A pycocotools COCO object indexing an already-loaded dataset dict (no second parse of the file)."""
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = dataset
    api.createIndex()
    return api


# ---------------------------------------------------------------------------------------------- backends
def resolve_backend(backend: str | None) -> str:
    """None -> pycocotools (the reference); "auto" -> faster_coco_eval when it is installed."""
    if backend is None:
        return "pycocotools"
    if backend not in BACKENDS:
        raise UserError(f"unknown COCO evaluation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "pycocotools":
        return backend
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        if backend == "auto":
            return "pycocotools"
        raise UserError("backend 'faster_coco_eval' needs the faster-coco-eval package: "
                        "pip install faster-coco-eval") from None
    return "faster_coco_eval"


def run_cocoeval(gt_api, records: list[dict], task: str, backend: str, img_ids: list[int] | None):
    """Run COCOeval (evaluate, accumulate, summarize) of `records` on one task; returns the COCOeval object.

    Records are shallow-copied because loadRes writes `area`, `id` and `iscrowd` into them; for "segm" the
    copies drop `bbox`, as detectron2 does, so that the area ranges use the mask area.
    """
    drop = "bbox" if task == "segm" else None
    dets = [{k: v for k, v in r.items() if k != drop} for r in records]
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster as cocoeval

        ev = cocoeval(gt_api, gt_api.loadRes(dets), task, print_function=print)
    else:
        from pycocotools.cocoeval import COCOeval as cocoeval

        ev = cocoeval(gt_api, gt_api.loadRes(dets), task)
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


# ---------------------------------------------------------------------------------------------- metrics
def derive_metrics(stats: np.ndarray, precision: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """detectron2's numbers from a summarized COCOeval: the six AP stats and per-category AP, in percent.

    `precision` is COCOeval.eval["precision"] with dims (iou, recall, category, area, maxdets); a category's AP
    averages it over IoU thresholds and recall points at area "all" and the largest maxDets, ignoring -1.
    """
    out = {m: float(stats[i] * 100) if stats[i] >= 0 else float("nan") for i, m in enumerate(METRICS)}
    if len(class_names) <= 1:
        return out
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


def nan_metrics() -> dict[str, float]:
    """What a task scores when there is nothing to evaluate (detectron2: NaN)."""
    return {m: float("nan") for m in METRICS}


def json_safe(results: dict) -> dict:
    """NaN -> null, so that metrics files are strict JSON."""
    return {task: {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}
            for task, m in results.items()}


# ---------------------------------------------------------------------------------------------- tables
def pipe_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "center") -> str:
    """A Markdown pipe table (the layout of detectron2's logs); floats with three decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        pad = (lambda s, w: s.center(w)) if align == "center" else (lambda s, w: s.ljust(w))
        return "| " + " | ".join(pad(v, w) for v, w in zip(values, widths)) + " |"

    rule = "|" + "|".join((":" + "-" * w + ":") if align == "center" else (":" + "-" * (w + 1)) for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in cells])


def format_results(task: str, metrics: dict[str, float], columns: int = 3) -> str:
    """The summary row table and, when there are several categories, the per-category AP table."""
    text = f"Evaluation results for {task}:\n" + pipe_table(METRICS, [[metrics[m] for m in METRICS]])
    per_cat = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
    if per_cat:
        cols = min(columns, len(per_cat))
        flat = [x for pair in per_cat for x in pair]
        flat += [None] * (-len(flat) % (2 * cols))
        rows = [flat[i:i + 2 * cols] for i in range(0, len(flat), 2 * cols)]
        text += f"\nPer-category {task} AP:\n" + pipe_table(["category", "AP"] * cols, rows, align="left")
    return text


# ---------------------------------------------------------------------------------------------- evaluator
class COCOEvaluator:
    """Collects COCO results records over a dataset, then scores them with COCOeval (detectron2 semantics).

    Args:
        gt: the ground truth: a COCO instances JSON path, its loaded dict, or a COCO object (pycocotools' or
            faster_coco_eval's; reused by the matching backend).
        output_dir: where `evaluate` writes coco_instances_results.json and metrics.json (atomically);
            None writes nothing.
        tasks: iou types among "bbox", "segm"; None: "bbox" and, when the records carry masks, "segm".
        backend: "pycocotools" (default, the reference), "faster_coco_eval", or "auto" (faster_coco_eval
            when installed). Both give the same numbers.
    """

    def __init__(self, gt, output_dir: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
                 backend: str | None = None) -> None:
        self._gt_name = str(gt) if isinstance(gt, (str, os.PathLike)) else "the ground truth"
        self._dataset, self._apis = self._load_gt(gt)
        if tasks is not None:
            tasks = tuple(tasks)
            bad = [t for t in tasks if t not in TASKS]
            if bad or not tasks:
                raise UserError(f"unknown COCO evaluation task {bad[0] if bad else '(none)'!r}; "
                                f"choose among {', '.join(TASKS)}")
        self._tasks = tasks
        self._backend = resolve_backend(backend)
        self._output_dir = None if output_dir is None else os.fspath(output_dir)
        self._images = {img["id"]: img for img in self._dataset["images"]}
        self._categories = {c["id"]: c["name"] for c in self._dataset["categories"]}
        self.stats: dict[str, np.ndarray] = {}
        self.reset()

    @property
    def dataset(self) -> dict:
        """The ground-truth COCO dataset dict."""
        return self._dataset

    def _load_gt(self, gt) -> tuple[dict, dict]:
        """The dataset dict, and the COCO API objects already at hand (by backend name)."""
        if isinstance(gt, (str, os.PathLike)):
            dataset, apis = read_json(gt, "annotations"), {}
        elif isinstance(gt, dict):
            dataset, apis = gt, {}
        elif isinstance(getattr(gt, "dataset", None), dict):  # a pycocotools or faster_coco_eval COCO object
            dataset, package = gt.dataset, type(gt).__module__.split(".")[0]
            apis = {package: gt} if package in ("pycocotools", "faster_coco_eval") else {}
        else:
            raise UserError(f"COCOEvaluator needs a COCO json path, dict or COCO object, not {type(gt).__name__}")
        check_coco_dataset(dataset, self._gt_name)
        return dataset, apis

    def _api(self, backend: str):
        """The ground truth as the backend's COCO object, built once."""
        if backend not in self._apis:
            if backend == "faster_coco_eval":
                from faster_coco_eval import COCO

                self._apis[backend] = COCO(self._dataset)
            else:
                self._apis[backend] = pycocotools_api(self._dataset)
        return self._apis[backend]

    def reset(self) -> None:
        """Forget the records and image ids processed so far."""
        self._records: list[dict] = []
        self._image_ids: set[int] | None = None

    def process(self, records: Iterable[dict], image_ids: Iterable[int] | None = None) -> None:
        """Add COCO results records (image_id, dataset category_id, XYWH bbox, score, RLE segmentation).

        `image_ids` names the images these records come from, including images with no detection. Once any
        call passes it, only the images so named (and those of the records) are evaluated, as detectron2 does
        for the inputs it saw; if no call does, every image of the ground truth is evaluated, like COCOeval.
        """
        records = list(records)
        for i, r in enumerate(records, start=len(self._records)):
            self._check_record(i, r)
        if image_ids is not None:
            image_ids = [int(i) for i in image_ids]
            unknown = [i for i in image_ids if i not in self._images]
            if unknown:
                raise UserError(f"image_id {unknown[0]} is not an image of {self._gt_name}")
            self._image_ids = (self._image_ids or set()) | set(image_ids)
        self._records.extend(records)

    def _check_record(self, i: int, r: Any) -> None:
        """One results record must reference known ids and be what COCOeval reads; else a UserError."""
        if not isinstance(r, dict):
            raise UserError(f"result {i} is not a JSON object: {str(r)[:60]}")
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise UserError(f"result {i} has no '{key}'")
        img = self._images.get(r["image_id"]) if isinstance(r["image_id"], (numbers.Number, str)) else None
        if img is None:
            raise UserError(f"result {i} has image_id {r['image_id']!r}, which is not an image of {self._gt_name}")
        if not isinstance(r["category_id"], (numbers.Number, str)) or r["category_id"] not in self._categories:
            ids = sorted(self._categories)
            shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
            raise UserError(f"result {i} has category_id {r['category_id']!r}, which is not a category of "
                            f"{self._gt_name} (ids {shown}); results need the dataset's category ids")
        if not isinstance(r["score"], numbers.Real):
            raise UserError(f"result {i} has a non-numeric score {r['score']!r}")
        box = r.get("bbox")
        if box is not None and (not isinstance(box, (list, tuple)) or len(box) != 4
                                or not all(isinstance(v, numbers.Real) for v in box)):
            raise UserError(f"result {i} has bbox {box!r}; expected [x, y, width, height]")
        seg = r.get("segmentation")
        if seg is not None:
            self._check_rle(i, seg, img)

    @staticmethod
    def _check_rle(i: int, seg: Any, img: dict) -> None:
        """Result masks must be compressed RLE of the image's size (COCOeval misreads anything else)."""
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), (str, bytes)) or "size" not in seg:
            raise UserError(f"result {i} has a segmentation that is not compressed RLE "
                            "({'size': [h, w], 'counts': str})")
        if "height" in img and "width" in img and list(seg["size"]) != [img["height"], img["width"]]:
            raise UserError(f"result {i} has a mask of size {list(seg['size'])} on image {img['id']}, "
                            f"which is {img['height']}x{img['width']}")

    def _resolve_tasks(self) -> tuple[str, ...]:
        """The tasks asked for, or those the records allow; every record must carry what its tasks need."""
        tasks = self._tasks
        if tasks is None:
            has_seg = any("segmentation" in r for r in self._records)
            tasks = ("bbox", "segm") if has_seg else ("bbox",)
        need = {"bbox": "bbox", "segm": "segmentation"}
        for task in tasks:
            i = next((i for i, r in enumerate(self._records) if r.get(need[task]) is None), None)
            if i is not None:
                raise UserError(f"result {i} has no '{need[task]}', which {task} evaluation needs")
        if "segm" in tasks:
            i = next((i for i, a in enumerate(self._dataset.get("annotations", [])) if "segmentation" not in a), None)
            if i is not None:
                raise UserError(f"{self._gt_name}: annotations[{i}] has no 'segmentation', which segm evaluation needs")
        return tasks

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Save the records, score every task, print the tables, save metrics.json; return the metrics.

        Multi-process: a collective. Records and image ids of every process are gathered on process 0,
        which alone scores, prints and writes; the others return its metrics (or raise its UserError).
        """
        if process_info()[1] == 1:
            return self._evaluate_gathered()
        gathered = all_gather_json([self._records, None if self._image_ids is None else sorted(self._image_ids)])
        results: Any = None
        if is_main_process():
            self._records = [r for records, _ in gathered for r in records]
            ids = [set(i) for _, i in gathered if i is not None]
            self._image_ids = set().union(*ids) if ids else None
            try:
                results = {"ok": self._evaluate_gathered()}
            except UserError as e:  # the others must not wait for metrics that never come
                results = {"error": str(e)}
        results = broadcast_json(results)
        if "error" in results:
            raise UserError(results["error"])
        return results["ok"]  # json carries NaN as NaN

    def _evaluate_gathered(self) -> dict[str, dict[str, float]]:
        """`evaluate` on the records at hand (all of them, on process 0)."""
        tasks = self._resolve_tasks()
        write = self._output_dir is not None and is_main_process()
        if write:
            os.makedirs(self._output_dir, exist_ok=True)
            write_json_atomic(os.path.join(self._output_dir, RESULTS_FILE), self._records)
        if "annotations" not in self._dataset:
            logger.warning("%s has no annotations: results saved, nothing evaluated", self._gt_name)
            return {}
        if not self._records:
            logger.warning("COCOEvaluator received no predictions: every metric is NaN")
        results = {task: self._evaluate_task(task) for task in tasks}
        for task in tasks:
            print(format_results(task, results[task]))
        if write:
            write_json_atomic(os.path.join(self._output_dir, METRICS_FILE), json_safe(results))
        return results

    def _evaluate_task(self, task: str) -> dict[str, float]:
        """One task's metrics in percent; the raw 12 COCOeval stats go to self.stats[task]."""
        if not self._records:  # COCO's loadRes cannot take an empty list
            self.stats[task] = np.full(12, -1.0)
            return nan_metrics()
        img_ids = None
        if self._image_ids is not None:
            img_ids = sorted(self._image_ids | {r["image_id"] for r in self._records})
        ev = run_cocoeval(self._api(self._backend), self._records, task, self._backend, img_ids)
        self.stats[task] = np.asarray(ev.stats[:12], dtype=np.float64)
        names = [self._categories[int(c)] for c in ev.params.catIds]
        return derive_metrics(self.stats[task], ev.eval["precision"], names)


def instances_to_coco_json(inst, image_id: int, file_name: str, to_dataset_id: dict[int, int]) -> list[dict]:
    """COCO results format: bbox XYWH, segmentation as RLE with string counts."""
    import pycocotools.mask as mask_util

    boxes = np.asarray(inst.boxes, np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else boxes
    rles = []
    if inst.masks is not None and len(inst.masks):
        rles = mask_util.encode(np.asfortranarray(np.asarray(inst.masks).transpose(1, 2, 0).astype(np.uint8)))
    out = []
    for i in range(len(boxes)):
        rec = {"image_id": image_id, "file_name": file_name,
               "category_id": int(to_dataset_id[int(inst.classes[i])]),
               "bbox": [round(float(v), 3) for v in xywh[i]], "score": round(float(inst.scores[i]), 5)}
        if rles:
            rec["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
        out.append(rec)
    return out

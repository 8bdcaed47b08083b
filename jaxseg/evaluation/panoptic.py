"""Panoptic quality (PQ, SQ, RQ) with the semantics of the COCO panoptic API (panopticapi).

Inputs are in the COCO panoptic format: per image a PNG whose pixel colour encodes a segment id
(``id = R + 256 * G + 256**2 * B``, 0 is VOID) and a ``segments_info`` list of
``{"id", "category_id", "iscrowd", "area"}``. The rules, per image, are those of Kirillov et al.,
"Panoptic Segmentation" (CVPR 2019), as panopticapi's ``evaluation.py`` implements them:

* a predicted segment matches a ground-truth segment of the same category that is not crowd when
  their IoU is strictly above 0.5; the prediction's pixels on ground-truth VOID are taken out of
  the union (``union = |pred| + |gt| - |pred & gt| - |pred & VOID|``). Crowd regions take no part
  in matching and are not taken out of the union. IoU > 0.5 makes every match unique;
* a matched pair is a true positive and adds its IoU to the category's IoU sum;
* an unmatched, non-crowd ground-truth segment is a false negative;
* an unmatched prediction is a false positive unless more than half of its pixels lie on VOID or on
  the crowd region of its own category. As in panopticapi, when an image has several crowd segments
  of one category only the last one listed in ``segments_info`` is that category's crowd region
  (COCO's ground truth has at most one per category and image);
* the ground-truth segment areas are read from ``segments_info["area"]`` when given (as panopticapi
  does), else counted in the PNG; predicted areas are always counted in the PNG.

Per category ``PQ = IoU_sum / (TP + FP/2 + FN/2)``, ``SQ = IoU_sum / TP`` (0 without a TP) and
``RQ = TP / (TP + FP/2 + FN/2)``, so ``PQ = SQ * RQ``. The "All", "Things" and "Stuff" figures are
means over the categories of the group that have at least one TP, FP or FN; ``n`` says how many.
A group with none has PQ = SQ = RQ = 0 and ``n = 0`` (panopticapi divides by zero there).

Each image costs one ``np.unique`` over its pixels (the joint gt/pred id histogram); the rest works
on the short list of overlapping (gt, pred) pairs, without loops over pixels or segments.

    stat = PQStat()
    for gt_png, gt_info, pred_png, pred_info in images:
        stat += pq_compute_single(rgb2id(gt_png), gt_info, rgb2id(pred_png), pred_info, categories)
    stat.pq_average(categories, isthing=True)   # {"pq": .., "sq": .., "rq": .., "n": ..}

    results = evaluate_panoptic("panoptic_val2017.json", None, "predictions.json", None)
    print(format_pq_table(results))

Mistakes in the inputs (a missing file, a predicted segment id that is not in its PNG or a PNG id
that is not in ``segments_info``, an unknown category, a ground-truth image without a prediction,
images of different sizes) raise :class:`jaxseg.errors.UserError` naming the file and segment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from jaxseg.errors import UserError

__all__ = [
    "OFFSET",
    "VOID",
    "PQStat",
    "PQStatCat",
    "detectron2_metrics",
    "evaluate_panoptic",
    "format_pq_table",
    "id2rgb",
    "pq_compute_single",
    "read_panoptic_png",
    "rgb2id",
]

VOID = 0
"""The segment id of unlabelled pixels."""

OFFSET = 256 * 256 * 256
"""One past the largest segment id an RGB PNG can hold (``2**24``)."""

Categories = Mapping[int, Mapping[str, Any]]


# ----------------------------------------------------------------------------- id <-> colour


def rgb2id(arr: np.ndarray) -> np.ndarray:
    """Segment ids from an ``(..., 3)`` (or ``(..., 4)``, alpha ignored) RGB array: ``R + 256 G + 256² B``."""
    arr = np.asarray(arr)
    if arr.ndim < 1 or arr.shape[-1] not in (3, 4):
        raise UserError(f"rgb2id expects an array whose last axis holds 3 (RGB) channels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"rgb2id expects integer colours, got dtype {arr.dtype}")
    rgb = arr[..., :3].astype(np.int64)
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise UserError("rgb2id expects colour channels in 0..255")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray | int) -> np.ndarray:
    """The ``(..., 3)`` uint8 RGB colours that encode segment ids (``0 <= id < 2**24``); inverse of :func:`rgb2id`."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"id2rgb expects integer segment ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise UserError(f"segment ids must lie in 0..{OFFSET - 1} to fit an RGB PNG, got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """The ``(H, W)`` int64 segment ids of a COCO panoptic PNG (RGB, RGBA or palette)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"panoptic PNG not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode == "P":
                img = img.convert("RGB")
            if img.mode not in ("RGB", "RGBA"):
                raise UserError(f"{path}: a panoptic PNG must be RGB (id = R + 256 G + 256^2 B), got mode {img.mode}")
            arr = np.asarray(img)
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read panoptic PNG {path}: {e}") from e
    return rgb2id(arr)


# ----------------------------------------------------------------------------- statistics


@dataclass
class PQStatCat:
    """The sums of one category: IoU of the true positives, and the TP, FP and FN counts."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def metrics(self) -> dict[str, float]:
        """``{"pq", "sq", "rq"}`` of this category (all 0 when it has no TP, FP or FN)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        if denom == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        return {
            "pq": self.iou / denom,
            "sq": self.iou / self.tp if self.tp else 0.0,
            "rq": self.tp / denom,
        }


class PQStat:
    """Per-category :class:`PQStatCat` sums, accumulated over images with ``+=``."""

    def __init__(self) -> None:
        self.pq_per_cat: dict[int, PQStatCat] = {}

    def __getitem__(self, category_id: int) -> PQStatCat:
        """The sums of ``category_id`` (created empty on first access)."""
        return self.pq_per_cat.setdefault(int(category_id), PQStatCat())

    def __iadd__(self, other: PQStat) -> PQStat:
        for cat, stat in other.pq_per_cat.items():
            mine = self[cat]  # a fresh PQStatCat the first time, so `other` is never aliased
            mine += stat
        return self

    def __repr__(self) -> str:
        return f"PQStat({dict(sorted(self.pq_per_cat.items()))})"

    def per_class(self, categories: Categories) -> dict[int, dict[str, float]]:
        """``{category_id: {"pq", "sq", "rq"}}`` for every category in ``categories``."""
        empty = PQStatCat()
        return {int(c): self.pq_per_cat.get(int(c), empty).metrics() for c in categories}

    def pq_average(self, categories: Categories, isthing: bool | None = None) -> dict[str, float | int]:
        """Mean PQ, SQ and RQ over the categories with any TP, FP or FN, and their number ``n``.

        ``isthing=True`` keeps the categories with ``isthing == 1``, ``False`` the others, ``None`` all.
        """
        sums = np.zeros(3)
        n = 0
        for cat, info in categories.items():
            if isthing is not None:
                if "isthing" not in info:
                    raise UserError(f"category {cat} has no 'isthing' field, needed for the Things/Stuff split")
                if (info["isthing"] == 1) != isthing:
                    continue
            stat = self.pq_per_cat.get(int(cat))
            if stat is None or stat.tp + stat.fp + stat.fn == 0:
                continue
            m = stat.metrics()
            sums += (m["pq"], m["sq"], m["rq"])
            n += 1
        pq, sq, rq = (sums / n).tolist() if n else (0.0, 0.0, 0.0)
        return {"pq": pq, "sq": sq, "rq": rq, "n": n}


# ----------------------------------------------------------------------------- one image


def _segment_table(
    segments: Sequence[Mapping[str, Any]], categories: Categories, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """Sorted ids, their categories and crowd flags, and the json areas (None where absent) of ``segments``."""
    ids, cats, crowd, areas = [], [], [], []
    for k, seg in enumerate(segments):
        try:
            sid, cat = int(seg["id"]), int(seg["category_id"])
            is_crowd = int(seg.get("iscrowd", 0)) == 1
            area = None if seg.get("area") is None else float(seg["area"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(
                f"{what}: segments_info[{k}] needs integer 'id', 'category_id' (and 'iscrowd', 'area'): {seg!r}"
            ) from e
        if not 0 < sid < OFFSET:
            raise UserError(f"{what}: segment id {sid} is out of range 1..{OFFSET - 1} (0 is VOID)")
        if cat not in categories:
            raise UserError(f"{what}: segment {sid} has unknown category_id {cat}")
        ids.append(sid)
        cats.append(cat)
        crowd.append(is_crowd)
        areas.append(area)
    ids_arr = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids_arr, kind="stable")
    ids_arr = ids_arr[order]
    dup = ids_arr[1:][ids_arr[1:] == ids_arr[:-1]]
    if dup.size:
        raise UserError(f"{what}: segment id {int(dup[0])} appears more than once in segments_info")
    return (
        ids_arr,
        np.asarray(cats, dtype=np.int64)[order],
        np.asarray(crowd, dtype=bool)[order],
        [areas[i] for i in order],
    )


def _as_id_map(pan: np.ndarray, what: str) -> np.ndarray:
    pan = np.asarray(pan)
    if pan.ndim != 2:
        hint = " (convert an RGB PNG with rgb2id)" if pan.ndim == 3 else ""
        raise UserError(f"{what}: expected an (H, W) array of segment ids, got shape {pan.shape}{hint}")
    if not np.issubdtype(pan.dtype, np.integer):
        raise UserError(f"{what}: segment ids must be integers, got dtype {pan.dtype}")
    pan = pan.astype(np.int64)
    if pan.size and (pan.min() < 0 or pan.max() >= OFFSET):
        raise UserError(f"{what}: segment ids must lie in 0..{OFFSET - 1}")
    return pan


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in ``sorted_ids`` and whether it is there."""
    if sorted_ids.size == 0:
        return np.zeros(values.shape, np.int64), np.zeros(values.shape, bool)
    idx = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return idx, sorted_ids[idx] == values


def pq_compute_single(
    gt_pan: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_pan: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Categories,
    *,
    name: str = "image",
    gt_name: str | None = None,
    pred_name: str | None = None,
) -> PQStat:
    """The per-category TP/FP/FN counts and IoU sums of one image (see the module docstring for the rules).

    Args:
      gt_pan, pred_pan: ``(H, W)`` integer segment ids (:func:`rgb2id` of the PNGs); 0 is VOID.
      gt_segments, pred_segments: the images' ``segments_info`` lists.
      categories: ``{category_id: {"isthing": 0|1, ...}}``.
      name: what error messages call the image (a file name or image id).
      gt_name, pred_name: what they call its ground truth and prediction (default: ``name`` and which).
    """
    gt_what = gt_name or f"{name} (ground truth)"
    pred_what = pred_name or f"{name} (prediction)"
    gt = _as_id_map(gt_pan, gt_what)
    pred = _as_id_map(pred_pan, pred_what)
    if gt.shape != pred.shape:
        raise UserError(
            f"{pred_what}: the prediction is {pred.shape[1]}x{pred.shape[0]} (width x height) but the ground truth "
            f"is {gt.shape[1]}x{gt.shape[0]} ({gt_what})"
        )
    gt_ids, gt_cat, gt_crowd, gt_json_area = _segment_table(gt_segments, categories, gt_what)
    pred_ids, pred_cat, _, _ = _segment_table(pred_segments, categories, pred_what)

    # Joint histogram: one entry per (gt id, pred id) pair that overlaps, with its pixel count.
    keys, inter = np.unique((gt * OFFSET + pred).ravel(), return_counts=True)
    pair_gt, pair_pred = keys // OFFSET, keys % OFFSET
    gi, in_gt = _lookup(gt_ids, pair_gt)
    pi, in_pred = _lookup(pred_ids, pair_pred)

    # Every non-VOID id in the predicted PNG must be listed, and every listed segment must be drawn.
    unlisted = pair_pred[~in_pred & (pair_pred != VOID)]
    if unlisted.size:
        raise UserError(f"{pred_what}: segment id {int(unlisted[0])} is in the PNG but not in segments_info")
    pred_area = np.bincount(pi[in_pred], weights=inter[in_pred], minlength=pred_ids.size)
    if np.any(pred_area == 0):
        missing = pred_ids[pred_area == 0]
        raise UserError(f"{pred_what}: segment id {int(missing[0])} is in segments_info but not in the PNG")

    gt_png_area = np.bincount(gi[in_gt], weights=inter[in_gt], minlength=gt_ids.size)
    gt_area = np.array([png if a is None else a for a, png in zip(gt_json_area, gt_png_area)], dtype=np.float64)

    # Prediction pixels on VOID, which are left out of the union.
    on_void = (pair_gt == VOID) & in_pred
    void_px = np.bincount(pi[on_void], weights=inter[on_void], minlength=pred_ids.size)

    # Matching: same category, gt not crowd, IoU > 0.5 (unique by construction).
    both = in_gt & in_pred
    cand = both.copy()
    cand[both] = ~gt_crowd[gi[both]] & (gt_cat[gi[both]] == pred_cat[pi[both]])
    c_gt, c_pred, c_inter = gi[cand], pi[cand], inter[cand].astype(np.float64)
    union = pred_area[c_pred] + gt_area[c_gt] - c_inter - void_px[c_pred]
    iou = np.divide(c_inter, union, out=np.zeros_like(c_inter), where=union > 0)
    match = iou > 0.5
    gt_matched = np.zeros(gt_ids.size, bool)
    gt_matched[c_gt[match]] = True
    pred_matched = np.zeros(pred_ids.size, bool)
    pred_matched[c_pred[match]] = True

    # Each category's crowd region: its last crowd segment in segments_info order (as panopticapi).
    crowd_of_cat = {int(s["category_id"]): int(s["id"]) for s in gt_segments if int(s.get("iscrowd", 0)) == 1}
    is_cat_crowd = np.array([crowd_of_cat.get(int(c)) == int(i) for i, c in zip(gt_ids, gt_cat)], dtype=bool)
    on_crowd = both.copy()
    on_crowd[both] = is_cat_crowd[gi[both]] & (gt_cat[gi[both]] == pred_cat[pi[both]])
    ignored_px = void_px + np.bincount(pi[on_crowd], weights=inter[on_crowd], minlength=pred_ids.size)

    fn = ~gt_matched & ~gt_crowd
    fp = ~pred_matched & (ignored_px / np.maximum(pred_area, 1) <= 0.5)

    # Per-category sums over this image's categories.
    all_cats = np.concatenate([gt_cat, pred_cat])
    cats, inv = np.unique(all_cats, return_inverse=True)
    gt_inv, pred_inv = inv[: gt_ids.size], inv[gt_ids.size :]
    n = cats.size
    tp_count = np.bincount(gt_inv[c_gt[match]], minlength=n)
    iou_sum = np.bincount(gt_inv[c_gt[match]], weights=iou[match], minlength=n)
    fn_count = np.bincount(gt_inv[fn], minlength=n)
    fp_count = np.bincount(pred_inv[fp], minlength=n)

    stat = PQStat()
    for k in np.flatnonzero(tp_count + fn_count + fp_count):
        stat.pq_per_cat[int(cats[k])] = PQStatCat(
            iou=float(iou_sum[k]), tp=int(tp_count[k]), fp=int(fp_count[k]), fn=int(fn_count[k])
        )
    return stat


# ----------------------------------------------------------------------------- files


def _load_json(spec: str | os.PathLike | Mapping[str, Any], what: str) -> tuple[dict[str, Any], str | None]:
    """The parsed json and its path (None when ``spec`` was already a dict)."""
    if isinstance(spec, Mapping):
        return dict(spec), None
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise UserError(f"{what} json not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} json {path}: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{what} json {path} must hold an object with 'annotations'")
    return data, path


def _folder(folder: str | os.PathLike | None, json_path: str | None, what: str) -> str:
    if folder is None:
        if json_path is None:
            raise UserError(f"{what}: give the PNG folder when the json is passed as a dict")
        folder = os.path.splitext(json_path)[0]  # panopticapi's default: X.json -> X/
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{what} PNG folder not found: {folder}")
    return folder


def _annotations(data: Mapping[str, Any], what: str) -> list[Mapping[str, Any]]:
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise UserError(f"{what} json has no 'annotations' list")
    for k, ann in enumerate(anns):
        if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= ann.keys():
            raise UserError(f"{what} json: annotations[{k}] needs 'image_id', 'file_name' and 'segments_info'")
    return anns


def evaluate_panoptic(
    gt_json: str | os.PathLike | Mapping[str, Any],
    gt_folder: str | os.PathLike | None,
    pred_json: str | os.PathLike | Mapping[str, Any],
    pred_folder: str | os.PathLike | None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """PQ of COCO-panoptic-format predictions against ground truth, like panopticapi's ``pq_compute``.

    Args:
      gt_json, pred_json: paths of the COCO panoptic json files (or their parsed dicts). The
        categories (with ``isthing``) come from the ground truth; predictions are paired with it by
        ``image_id``, and predictions for images not in the ground truth are ignored.
      gt_folder, pred_folder: the folders of the PNGs; None means the json's path without ``.json``.
      progress: show a progress bar.

    Returns:
      ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq", "rq"}}}``
      with fractions in 0..1 (:func:`format_pq_table` prints them in percent).
    """
    gt_data, gt_path = _load_json(gt_json, "ground-truth")
    pred_data, pred_path = _load_json(pred_json, "prediction")
    gt_dir = _folder(gt_folder, gt_path, "ground-truth")
    pred_dir = _folder(pred_folder, pred_path, "prediction")
    cats_list = gt_data.get("categories")
    if not isinstance(cats_list, list) or not all(isinstance(c, Mapping) and "id" in c for c in cats_list):
        raise UserError("ground-truth json needs a 'categories' list of objects with 'id' and 'isthing'")
    categories = {int(c["id"]): c for c in cats_list}

    preds: dict[Any, Mapping[str, Any]] = {}
    for ann in _annotations(pred_data, "prediction"):
        if ann["image_id"] in preds:
            raise UserError(f"prediction json has two annotations for image_id {ann['image_id']!r}")
        preds[ann["image_id"]] = ann
    pairs = []
    for gt_ann in _annotations(gt_data, "ground-truth"):
        pred_ann = preds.get(gt_ann["image_id"])
        if pred_ann is None:
            raise UserError(f"no prediction for ground-truth image_id {gt_ann['image_id']!r} ({gt_ann['file_name']})")
        pairs.append((gt_ann, pred_ann))

    from tqdm import tqdm

    stat = PQStat()
    for gt_ann, pred_ann in tqdm(pairs, desc="panoptic eval", unit="img", disable=not progress):
        gt_file = os.path.join(gt_dir, gt_ann["file_name"])
        pred_file = os.path.join(pred_dir, pred_ann["file_name"])
        stat += pq_compute_single(
            read_panoptic_png(gt_file),
            gt_ann["segments_info"],
            read_panoptic_png(pred_file),
            pred_ann["segments_info"],
            categories,
            name=f"image_id {gt_ann['image_id']!r}",
            gt_name=f"image_id {gt_ann['image_id']!r}, ground truth {gt_file}",
            pred_name=f"image_id {gt_ann['image_id']!r}, prediction {pred_file}",
        )

    results: dict[str, Any] = {
        name: stat.pq_average(categories, isthing=isthing)
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False))
    }
    results["per_class"] = stat.per_class(categories)
    return results


# ----------------------------------------------------------------------------- reporting


def format_pq_table(results: Mapping[str, Any]) -> str:
    """The All/Things/Stuff PQ, SQ, RQ (in percent) and category counts as detectron2 logs them (a pipe table)."""
    headers = ["", "PQ", "SQ", "RQ", "#categories"]
    rows = [
        [name] + [f"{100 * results[name][k]:.3f}" for k in ("pq", "sq", "rq")] + [str(results[name]["n"])]
        for name in ("All", "Things", "Stuff")
    ]
    widths = [max(len(h) + 2 if h else 0, *(len(r[j]) for r in rows)) for j, h in enumerate(headers)]

    def center(text: str, width: int) -> str:
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(" " + center(c, w) + " " for c, w in zip(cells, widths)) + "|"

    rule = "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def detectron2_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The flat percentages detectron2's ``COCOPanopticEvaluator`` returns: PQ, SQ, RQ and their _th/_st forms."""
    out = {}
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for k in ("pq", "sq", "rq"):
            out[k.upper() + suffix] = 100 * results[name][k]
    return out

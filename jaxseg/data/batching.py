"""Static-shape training and evaluation batches, built on the host in background workers.

Training batch layout (a dict of numpy arrays; B = local batch size, G = DATALOADER.MAX_GT_INSTANCES,
S = INPUT.GT_MASK_RESOLUTION):

=============  =================  ============================================================
images         (B, Hp, Wp, 3)     uint8, INPUT.FORMAT channel order, zero padding right/bottom
image_hw       (B, 2) int32       resized image size inside the padding
gt_boxes       (B, G, 4) float32  XYXY in resized-image pixels (zero where not valid)
gt_classes     (B, G) int32       contiguous class ids (zero where not valid)
gt_valid       (B, G) bool        which of the G slots hold an instance
gt_masks       (B, G, S, S) uint8 0/1 mask resampled inside its own GT box (only with MODEL.MASK_ON)
image_id       (B,) int64         the dataset's image id
=============  =================  ============================================================

``gt_masks[b, g]`` covers exactly ``gt_boxes[b, g]``: pixel (i, j) is the box cell
``x0 + (j + [0, 1]) * (x1 - x0) / S``, ``y0 + (i + [0, 1]) * (y1 - y0) / S``. The device turns it into
the mask target of a proposal box by ROIAlign with the proposal's coordinates relative to the GT box.
Polygons are rasterized straight into that frame (as detectron2 rasterizes them into proposal
boxes); RLE masks are decoded and area-resampled into it (Pillow bilinear with a box, >= 0.5).

Semantics follow detectron2's training mapper and loader: ResizeShortestEdge(MIN_SIZE_TRAIN,
MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING) then RandomFlip(INPUT.RANDOM_FLIP); crowd annotations
removed; boxes clipped to the image and empty ones dropped; images without non-crowd annotations
dropped when DATALOADER.FILTER_EMPTY_ANNOTATIONS; an infinite stream of per-epoch shuffles
(TrainingSampler, or RepeatFactorTrainingSampler) grouped by aspect ratio (w > h or not) so that a
batch has one padded size: the landscape or the portrait bucket, each the largest size the resize
can produce on this dataset rounded up to 32 (one square bucket without ASPECT_RATIO_GROUPING).

Determinism: the global batch plan depends only on (seed, dataset, IMS_PER_BATCH); the augmentation
of the sample at position p of epoch e's stream draws from ``numpy.random.default_rng([seed, 1, e, p])``.
So ``loader.batches(k)`` gives exactly what iterating from 0 gives from step k on, and the global
batch is the same whatever the number of hosts. Each host (``process_index`` of ``process_count``)
reads only its slice of every global batch, so hosts read disjoint images.

Workers: DATALOADER.NUM_WORKERS threads (default) or processes load samples in the background while
a feeder thread collates finished batches into a bounded queue; ``num_workers=0`` does the same work
synchronously in the caller (the reference the benchmark compares with).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from jaxseg.data.image_io import read_image
from jaxseg.data.transforms import (
    BILINEAR,
    RandomFlip,
    ResizeShortestEdge,
    resize_image,
    resize_shortest_edge_shape,
)
from jaxseg.errors import UserError

__all__ = [
    "SIZE_DIVISIBILITY",
    "TestLoader",
    "TrainLoader",
    "box_aligned_mask",
    "build_test_loader",
    "build_train_loader",
    "filter_images_without_annotations",
    "paste_box_mask",
    "train_buckets",
]

logger = logging.getLogger(__name__)

SIZE_DIVISIBILITY = 32
_BOX_EPS = 1e-5  # detectron2's threshold for an empty box (filter_empty_instances)
_WARNED: set[str] = set()


def _round_up(x: int, d: int = SIZE_DIVISIBILITY) -> int:
    return int(math.ceil(x / d) * d)


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


# ----------------------------------------------------------------------------------------------
# Masks in the frame of their box


def box_aligned_mask(segmentation: list | dict | None, box: Sequence[float], size: int,
                     image_hw: tuple[int, int]) -> np.ndarray:
    """The (size, size) uint8 0/1 mask of ``segmentation`` sampled inside ``box`` (XYXY, same frame).

    Polygons are shifted and scaled into the box and rasterized at ``size``; an RLE (compressed or
    not) of an ``image_hw`` image is decoded and area-resampled; no segmentation fills the box.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not segmentation:
        return np.ones((size, size), np.uint8)
    if isinstance(segmentation, dict):
        return _rle_box_mask(segmentation, (x0, y0, x1, y1), size, image_hw)
    scale = np.array([size / max(x1 - x0, 0.1), size / max(y1 - y0, 0.1)])
    polygons = [((np.asarray(p, np.float64).reshape(-1, 2) - (x0, y0)) * scale).ravel().tolist()
                for p in segmentation]
    rle = mask_util.merge(mask_util.frPyObjects(polygons, size, size))
    return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)


def _rle_box_mask(rle: dict, box: tuple[float, float, float, float], size: int,
                  image_hw: tuple[int, int]) -> np.ndarray:
    """An RLE mask decoded at image size, then averaged over the box onto a size x size grid."""
    h, w = image_hw
    if isinstance(rle["counts"], list):
        rle = mask_util.frPyObjects(rle, h, w)
    full = mask_util.decode(rle)
    x0, y0, x1, y1 = box
    x1, y1 = max(x1, x0 + 1e-3), max(y1, y0 + 1e-3)
    image = Image.fromarray(full * np.uint8(255))
    resampled = np.asarray(image.resize((size, size), BILINEAR, box=(x0, y0, min(x1, w), min(y1, h))))
    return (resampled >= 128).astype(np.uint8)


def paste_box_mask(mask: np.ndarray, box: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`box_aligned_mask`: (H, W) uint8, 1 where a pixel centre falls in a set cell of the box."""
    h, w = image_hw
    size_y, size_x = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    cols = np.floor((np.arange(w) + 0.5 - x0) / max(x1 - x0, 1e-6) * size_x).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5 - y0) / max(y1 - y0, 1e-6) * size_y).astype(np.int64)
    inside = (rows[:, None] >= 0) & (rows[:, None] < size_y) & (cols[None] >= 0) & (cols[None] < size_x)
    out = mask[np.clip(rows, 0, size_y - 1)[:, None], np.clip(cols, 0, size_x - 1)[None]]
    return (out.astype(bool) & inside).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# One training sample


@dataclass(frozen=True)
class TrainMapper:
    """Turns (epoch, stream position, dataset index) into one augmented sample; picklable for processes."""

    records: Sequence[dict]
    image_format: str
    resize: ResizeShortestEdge
    flip: RandomFlip | None
    max_instances: int
    mask_size: int | None
    seed: int

    def __call__(self, key: tuple[int, int, int]) -> dict:
        """Read, resize and flip one image and its instances (rng from (seed, epoch, position))."""
        epoch, position, index = (int(k) for k in key)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, 1, epoch, position])
        image = _read_checked(record, self.image_format)
        h, w = image.shape[:2]
        resize = self.resize.get_transform(h, w, rng)
        image = resize.apply_image(image)
        flip = self.flip.get_transform(resize.new_h, resize.new_w, rng) if self.flip else None
        if flip is not None:
            image = image[:, ::-1] if flip.horizontal else image
            image = image[::-1] if flip.vertical else image
        sample = {"image": image, "image_hw": (resize.new_h, resize.new_w), "image_id": _int_id(record)}
        sample.update(self._instances(record, resize, flip))
        return sample

    def _instances(self, record: dict, resize, flip) -> dict[str, np.ndarray]:
        """Boxes (resized frame), classes and box-aligned masks of the kept instances."""
        h, w = resize.h, resize.w
        annos = [a for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]
        boxes = _xyxy_clipped(annos, h, w)
        new_boxes = resize.apply_boxes(boxes) if len(boxes) else boxes
        if flip is not None and len(boxes):
            new_boxes = flip.apply_boxes(new_boxes)
        keep = ((new_boxes[:, 2] - new_boxes[:, 0]) > _BOX_EPS) & ((new_boxes[:, 3] - new_boxes[:, 1]) > _BOX_EPS)
        masks = None
        if self.mask_size:
            masks = np.zeros((len(annos), self.mask_size, self.mask_size), np.uint8)
            for i in np.flatnonzero(keep):
                masks[i] = box_aligned_mask(annos[i].get("segmentation"), boxes[i], self.mask_size, (h, w))
                keep[i] = not isinstance(annos[i].get("segmentation"), dict) or masks[i].any()
            if flip is not None and flip.horizontal:
                masks = masks[:, :, ::-1]
            if flip is not None and flip.vertical:
                masks = masks[:, ::-1, :]
        keep = np.flatnonzero(keep)
        if len(keep) > self.max_instances:
            _warn_once("max_instances", f"image {record['image_id']} has {len(keep)} instances; keeping the first "
                       f"{self.max_instances} (DATALOADER.MAX_GT_INSTANCES); further such images are not reported")
            keep = keep[: self.max_instances]
        out = {
            "boxes": new_boxes[keep].astype(np.float32),
            "classes": np.array([annos[i]["category_id"] for i in keep], np.int32),
        }
        if masks is not None:
            out["masks"] = masks[keep]
        return out


def _read_checked(record: dict, image_format: str) -> np.ndarray:
    """The record's image; a UserError if its size differs from the record's height and width."""
    image = read_image(record["file_name"], image_format)
    expected = (record.get("height"), record.get("width"))
    if None not in expected and image.shape[:2] != tuple(expected):
        raise UserError(
            f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation says "
            f"{expected[1]}x{expected[0]}"
        )
    return image


def _int_id(record: dict) -> int:
    """The record's image_id as an int (the batch holds int64 ids)."""
    try:
        return int(record["image_id"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"image {record.get('file_name')} needs an integer image_id, got "
                        f"{record.get('image_id')!r}") from err


def _xyxy_clipped(annos: Sequence[dict], h: int, w: int) -> np.ndarray:
    """(N, 4) float64 XYXY boxes of the annotations (XYWH_ABS or XYXY_ABS), clipped to the image."""
    try:
        boxes = np.array([a["bbox"] for a in annos], np.float64).reshape(-1, 4)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"an annotation has no valid 'bbox' ([x, y, w, h] expected): {err}") from err
    for i, a in enumerate(annos):
        if a.get("bbox_mode", "XYWH_ABS") in ("XYWH_ABS", 1):
            boxes[i, 2:] += boxes[i, :2]
    return np.clip(boxes, 0.0, [w, h, w, h])


def collate_train(samples: Sequence[dict], bucket_hw: tuple[int, int], max_instances: int,
                  mask_size: int | None) -> dict[str, np.ndarray]:
    """Pad samples into one batch of the training layout (see the module docstring)."""
    n, g = len(samples), max_instances
    channels = samples[0]["image"].shape[2]
    batch = {
        "images": np.zeros((n, *bucket_hw, channels), np.uint8),
        "image_hw": np.zeros((n, 2), np.int32),
        "gt_boxes": np.zeros((n, g, 4), np.float32),
        "gt_classes": np.zeros((n, g), np.int32),
        "gt_valid": np.zeros((n, g), bool),
        "image_id": np.zeros((n,), np.int64),
    }
    if mask_size:
        batch["gt_masks"] = np.zeros((n, g, mask_size, mask_size), np.uint8)
    for i, sample in enumerate(samples):
        h, w = sample["image_hw"]
        batch["images"][i, :h, :w] = sample["image"]
        batch["image_hw"][i] = (h, w)
        batch["image_id"][i] = sample["image_id"]
        k = len(sample["classes"])
        batch["gt_boxes"][i, :k] = sample["boxes"]
        batch["gt_classes"][i, :k] = sample["classes"]
        batch["gt_valid"][i, :k] = True
        if mask_size:
            batch["gt_masks"][i, :k] = sample["masks"]
    return batch


# ----------------------------------------------------------------------------------------------
# Which images go in which batch


def filter_images_without_annotations(dataset_dicts: Sequence[dict]) -> list[dict]:
    """The records with at least one non-crowd annotation (detectron2's FILTER_EMPTY_ANNOTATIONS)."""
    kept = [r for r in dataset_dicts if any(not a.get("iscrowd", 0) for a in r.get("annotations", ()))]
    if len(kept) < len(dataset_dicts):
        logger.info("removed %d images without non-crowd annotations; %d left", len(dataset_dicts) - len(kept),
                    len(kept))
    return kept


def train_buckets(records: Sequence[dict], resize: ResizeShortestEdge,
                  grouping: bool = True) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The padded (Hp, Wp) per bucket and each record's bucket.

    With grouping: bucket 0 holds the images with w > h, bucket 1 the others (as detectron2's
    AspectRatioGroupedDataset); each is the largest resized size its images can get (longest short
    edge, capped by the max size), rounded up to 32. Without grouping: one bucket that fits all.
    """
    short = max(resize.short_edge_length)
    sizes = np.array([resize_shortest_edge_shape(r["height"], r["width"], short, resize.max_size) if short
                      else (r["height"], r["width"]) for r in records], np.int64).reshape(-1, 2)
    landscape = np.array([r["width"] > r["height"] for r in records], bool)
    group = np.where(landscape, 0, 1) if grouping else np.zeros(len(records), np.int64)
    buckets = []
    for b in range(2 if grouping else 1):
        members = sizes[group == b]
        hw = members.max(axis=0) if len(members) else sizes.max(axis=0)
        buckets.append((_round_up(int(hw[0])), _round_up(int(hw[1]))))
    return buckets, group


def repeat_factors(records: Sequence[dict], threshold: float, sqrt: bool = True) -> np.ndarray:
    """detectron2's LVIS repeat factor per image: max over its classes of max(1, (t / f_c) ** 0.5)."""
    counts: dict[int, int] = {}
    for r in records:
        for c in {a["category_id"] for a in r.get("annotations", ())}:
            counts[c] = counts.get(c, 0) + 1
    power = 0.5 if sqrt else 1.0
    per_class = {c: max(1.0, (threshold / (n / len(records))) ** power) for c, n in counts.items()}
    return np.array([max([per_class[a["category_id"]] for a in r.get("annotations", ())], default=1.0)
                     for r in records], np.float64)


class BatchPlan:
    """The infinite sequence of global batches: which (epoch, position, index) goes in batch k.

    Every epoch the sampler draws a fresh order of the dataset from ``default_rng([seed, 0, epoch])``;
    the stream is dealt into per-bucket queues and a batch is emitted when its queue holds
    ``batch_size`` samples (leftovers carry into the next epoch), as detectron2's aspect-ratio
    grouping does with its infinite sampler.
    """

    def __init__(self, group: np.ndarray, batch_size: int, seed: int, factors: np.ndarray | None = None) -> None:
        if len(group) == 0:
            raise UserError("the training set is empty (after removing images without annotations)")
        self.group, self.batch_size, self.seed, self.factors = np.asarray(group), batch_size, seed, factors
        self.num_groups = int(self.group.max()) + 1
        self._batches: list[np.ndarray] = []  # each (batch_size, 3): epoch, position, index
        self._bucket: list[int] = []
        self._carry = [np.zeros((0, 3), np.int64) for _ in range(self.num_groups)]
        self._epoch = 0
        self._lock = threading.Lock()

    def __getitem__(self, step: int) -> tuple[np.ndarray, int]:
        """The (batch_size, 3) keys of global batch ``step`` and its bucket."""
        if step < 0:
            raise IndexError(f"negative step {step}")
        with self._lock:
            while len(self._batches) <= step:
                self._add_epoch()
            return self._batches[step], self._bucket[step]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them."""
        rng = np.random.default_rng([self.seed, 0, epoch])
        if self.factors is None:
            return rng.permutation(len(self.group))
        whole = np.floor(self.factors)
        reps = (whole + (rng.random(len(self.factors)) < self.factors - whole)).astype(np.int64)
        return rng.permutation(np.repeat(np.arange(len(self.factors)), reps))

    def _add_epoch(self) -> None:
        """Deal one more epoch into the bucket queues and record the batches it completes."""
        order = self.epoch_order(self._epoch)
        keys = np.stack([np.full(len(order), self._epoch), np.arange(len(order)), order], axis=1)
        found = []
        for b in range(self.num_groups):
            positions = np.flatnonzero(self.group[order] == b)
            queue_b = np.concatenate([self._carry[b], keys[positions]])
            full = len(queue_b) // self.batch_size
            carried = len(self._carry[b])
            for j in range(full):
                done_at = positions[(j + 1) * self.batch_size - 1 - carried]
                found.append((done_at, b, queue_b[j * self.batch_size:(j + 1) * self.batch_size]))
            self._carry[b] = queue_b[full * self.batch_size:]
        for _, b, batch in sorted(found, key=lambda item: item[0]):
            self._batches.append(batch)
            self._bucket.append(b)
        self._epoch += 1


# ----------------------------------------------------------------------------------------------
# Background execution


class _WorkerPool:
    """Threads or processes that run one sample function; processes get the function once at start."""

    def __init__(self, fn: Callable[[Any], Any], num_workers: int, use_processes: bool) -> None:
        self.fn = fn
        if use_processes:
            context = multiprocessing.get_context("forkserver" if "forkserver" in
                                                  multiprocessing.get_all_start_methods() else "spawn")
            self.executor: cf.Executor = cf.ProcessPoolExecutor(num_workers, mp_context=context,
                                                                initializer=_set_process_fn, initargs=(fn,))
            self.call: Callable[[Any], Any] = _call_process_fn
        else:
            self.executor = cf.ThreadPoolExecutor(num_workers, thread_name_prefix="jaxseg-data")
            self.call = fn

    def submit(self, arg: Any) -> cf.Future:
        return self.executor.submit(self.call, arg)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


_PROCESS_FN: Callable[[Any], Any] | None = None


def _set_process_fn(fn: Callable[[Any], Any]) -> None:
    """Worker-process initializer: keep the sample function (and its records) for every task."""
    global _PROCESS_FN
    _PROCESS_FN = fn


def _call_process_fn(arg: Any) -> Any:
    assert _PROCESS_FN is not None
    return _PROCESS_FN(arg)


_END = object()


class _Failure:
    """An exception raised in the background, re-raised in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchIterator:
    """Iterator over batches made in the background; ``close()`` (or leaving a ``with``) stops the workers.

    ``jobs`` yields ``(meta, [sample args])``; every sample goes to the pool as soon as fewer than
    ``depth`` batches are in flight, and a feeder thread collates finished batches, in order, into a
    queue of ``prefetch`` batches. An iterator dropped without ``close()`` stops when collected.
    """

    def __init__(self, jobs: Iterator[tuple[Any, list]], pool: _WorkerPool,
                 collate: Callable[[Any, list], Any], prefetch: int = 2, depth: int | None = None) -> None:
        self._pool = pool
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._done = False
        depth = max(1, depth if depth is not None else prefetch)
        # The feeder gets no reference to self, so an abandoned iterator can be collected (and closed).
        self._thread = threading.Thread(target=_feed, args=(jobs, pool, collate, depth, self._queue, self._stop),
                                        name="jaxseg-data-feeder", daemon=True)
        self._thread.start()

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the feeder and the workers; pending work is cancelled. Safe to call twice."""
        if self._done:
            return
        self._done = True
        self._stop.set()
        self._thread.join()
        self._pool.shutdown()

    def __enter__(self) -> PrefetchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _feed(jobs: Iterator[tuple[Any, list]], pool: _WorkerPool, collate: Callable[[Any, list], Any], depth: int,
          out: queue.Queue, stop: threading.Event) -> None:
    """Feeder thread: keep ``depth`` batches of samples in the pool, collate them in order into ``out``."""
    inflight: deque = deque()
    exhausted = False
    try:
        while not stop.is_set():
            while not exhausted and len(inflight) < depth:
                try:
                    meta, args = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                inflight.append((meta, [pool.submit(a) for a in args]))
            if not inflight:
                _put(out, _END, stop)
                return
            meta, futures = inflight.popleft()
            _put(out, collate(meta, [f.result() for f in futures]), stop)
    except BaseException as error:  # handed to the consumer
        _put(out, _Failure(error), stop)


def _put(out: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put ``item`` into ``out``, giving up when ``stop`` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _SyncIterator:
    """The same batches computed in the caller's thread (num_workers=0): no prefetch."""

    def __init__(self, jobs: Iterator[tuple[Any, list]], fn: Callable[[Any], Any],
                 collate: Callable[[Any, list], Any]) -> None:
        self._jobs, self._fn, self._collate = jobs, fn, collate

    def __iter__(self) -> _SyncIterator:
        return self

    def __next__(self) -> Any:
        meta, args = next(self._jobs)
        return self._collate(meta, [self._fn(a) for a in args])

    def close(self) -> None:
        """Nothing runs in the background."""

    def __enter__(self) -> _SyncIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _make_iterator(jobs: Iterator[tuple[Any, list]], fn: Callable[[Any], Any], collate: Callable[[Any, list], Any],
                   num_workers: int, use_processes: bool, prefetch: int) -> PrefetchIterator | _SyncIterator:
    """Background iterator with a fresh pool, or the synchronous one when ``num_workers`` is 0."""
    if num_workers <= 0:
        return _SyncIterator(jobs, fn, collate)
    pool = _WorkerPool(fn, num_workers, use_processes)
    return PrefetchIterator(jobs, pool, collate, prefetch=prefetch, depth=max(prefetch, 2))


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this host; jax's values for the ones not given."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} is not in [0, process_count={process_count})")
    return int(process_index), int(process_count)


# ----------------------------------------------------------------------------------------------
# Training loader


class TrainLoader:
    """Infinite training batches of this host; ``iter(loader)`` starts at step 0, ``batches(k)`` at step k.

    Attributes:
        dataset_dicts: the records used (after filtering); ``buckets``: padded (Hp, Wp) per bucket;
        global_batch_size, local_batch_size, process_index, process_count; mapper: the sample function.
    """

    def __init__(self, mapper: TrainMapper, plan: BatchPlan, buckets: list[tuple[int, int]], *,
                 global_batch_size: int, process_index: int, process_count: int, num_workers: int,
                 use_processes: bool = False, prefetch: int = 2) -> None:
        self.mapper, self.plan, self.buckets = mapper, plan, buckets
        self.dataset_dicts = mapper.records
        self.global_batch_size, self.process_index, self.process_count = global_batch_size, process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.num_workers, self.use_processes, self.prefetch = num_workers, use_processes, prefetch

    def keys(self, step: int) -> tuple[np.ndarray, int]:
        """This host's (local_batch_size, 3) keys (epoch, position, dataset index) at ``step``, and the bucket."""
        keys, bucket = self.plan[step]
        start = self.process_index * self.local_batch_size
        return keys[start:start + self.local_batch_size], bucket

    def batch_indices(self, step: int) -> np.ndarray:
        """Indices into ``dataset_dicts`` of this host's images at ``step``."""
        return self.keys(step)[0][:, 2].copy()

    def load_batch(self, step: int) -> dict[str, np.ndarray]:
        """Build this host's batch of ``step`` synchronously in the caller's thread."""
        keys, bucket = self.keys(step)
        return self._collate(bucket, [self.mapper(tuple(k)) for k in keys])

    def batches(self, start_step: int = 0) -> PrefetchIterator | _SyncIterator:
        """Batches from ``start_step`` on, made in the background; close the iterator (or use ``with``) when done."""

        def jobs() -> Iterator[tuple[int, list]]:
            step = start_step
            while True:
                keys, bucket = self.keys(step)
                yield bucket, [tuple(int(v) for v in k) for k in keys]
                step += 1

        return _make_iterator(jobs(), self.mapper, self._collate, self.num_workers, self.use_processes,
                              self.prefetch)

    def __iter__(self) -> PrefetchIterator | _SyncIterator:
        return self.batches(0)

    def _collate(self, bucket: int, samples: list[dict]) -> dict[str, np.ndarray]:
        return collate_train(samples, self.buckets[bucket], self.mapper.max_instances, self.mapper.mask_size)


def train_augmentations(cfg) -> tuple[ResizeShortestEdge, RandomFlip | None]:
    """detectron2's training augmentations from the config: the resize and the flip (None for "none")."""
    if cfg.INPUT.CROP.ENABLED:
        raise UserError("INPUT.CROP.ENABLED is not supported by jaxseg's training loader; set it to False")
    sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    if sampling not in ("choice", "range"):
        raise UserError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}")
    min_size = cfg.INPUT.MIN_SIZE_TRAIN
    min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    resize = ResizeShortestEdge(min_size, cfg.INPUT.MAX_SIZE_TRAIN, sampling)
    mode = cfg.INPUT.RANDOM_FLIP
    if mode not in ("none", "horizontal", "vertical"):
        raise UserError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {mode!r}")
    flip = None if mode == "none" else RandomFlip(0.5, horizontal=mode == "horizontal", vertical=mode == "vertical")
    return resize, flip


def build_train_loader(cfg, dataset_dicts: Sequence[dict], *, seed: int, process_index: int | None = None,
                       process_count: int | None = None, num_workers: int | None = None,
                       use_processes: bool = False, prefetch: int = 2) -> TrainLoader:
    """The training loader of this host for ``dataset_dicts`` (records as from ``get_dataset_dicts``).

    Args:
        cfg: reads INPUT.* (sizes, flip, format, GT_MASK_RESOLUTION), DATALOADER.* (workers, grouping,
            sampler, filtering, MAX_GT_INSTANCES), SOLVER.IMS_PER_BATCH (global) and MODEL.MASK_ON.
        seed: a non-negative int; the batches are a function of it.
        process_index, process_count: this host's place (default ``jax.process_index()/process_count()``).
        num_workers: background workers (default DATALOADER.NUM_WORKERS); 0 loads in the caller's thread.
        use_processes: worker processes instead of threads.
        prefetch: batches kept ready ahead of the consumer.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"the training loader needs a non-negative integer seed, got {seed!r}")
    process_index, process_count = _process_shard(process_index, process_count)
    batch_size = int(cfg.SOLVER.IMS_PER_BATCH)
    if batch_size < 1 or batch_size % process_count:
        raise UserError(f"SOLVER.IMS_PER_BATCH={batch_size} must be a positive multiple of the number of hosts "
                        f"({process_count})")
    records = list(dataset_dicts)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        records = filter_images_without_annotations(records)
    if not records:
        raise UserError("no training images (after removing images without non-crowd annotations)")
    resize, flip = train_augmentations(cfg)
    buckets, group = train_buckets(records, resize, cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    plan = BatchPlan(group, batch_size, int(seed), _sampler_factors(cfg, records))
    mapper = TrainMapper(
        records=records, image_format=cfg.INPUT.FORMAT, resize=resize, flip=flip,
        max_instances=int(cfg.DATALOADER.MAX_GT_INSTANCES),
        mask_size=int(cfg.INPUT.GT_MASK_RESOLUTION)
        if cfg.MODEL.MASK_ON else None,
        seed=int(seed),
    )
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return TrainLoader(mapper, plan, buckets, global_batch_size=batch_size, process_index=process_index,
                       process_count=process_count, num_workers=int(workers), use_processes=use_processes,
                       prefetch=prefetch)


def _sampler_factors(cfg, records: Sequence[dict]) -> np.ndarray | None:
    """Per-image repeat factors for RepeatFactorTrainingSampler, None for TrainingSampler."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return None
    if name == "RepeatFactorTrainingSampler":
        return repeat_factors(records, cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.REPEAT_SQRT)
    raise UserError(f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported; use TrainingSampler or "
                    "RepeatFactorTrainingSampler")


# ----------------------------------------------------------------------------------------------
# Evaluation loader


@dataclass(frozen=True)
class TestMapper:
    """One evaluation image: test-time resize, padded to a multiple of 32."""

    image_format: str
    min_size: int
    max_size: int

    def __call__(self, record: dict) -> dict[str, Any]:
        image = _read_checked(record, self.image_format)
        h, w = image.shape[:2]
        nh, nw = resize_shortest_edge_shape(h, w, self.min_size, self.max_size) if self.min_size else (h, w)
        if (nh, nw) != (h, w):
            image = resize_image(image, (nh, nw))
        padded = np.zeros((1, _round_up(nh), _round_up(nw), image.shape[2]), np.uint8)
        padded[0, :nh, :nw] = image
        return {
            "image": padded,
            "image_hw": np.array([[nh, nw]], np.int32),
            "orig_hw": np.array([[h, w]], np.int32),
            "image_id": _int_id(record),
            "file_name": record["file_name"],
        }


class TestLoader:
    """Evaluation images of this host, in dataset order, prepared in the background.

    Each item: ``image`` (1, Hp, Wp, 3) uint8 padded to multiples of 32, ``image_hw`` (1, 2) int32
    resized size, ``orig_hw`` (1, 2) int32, ``image_id``, ``file_name``. Host ``i`` of ``n`` gets
    records ``i, i + n, ...``.
    """

    def __init__(self, mapper: TestMapper, records: Sequence[dict], num_workers: int, prefetch: int = 4) -> None:
        self.mapper, self.dataset_dicts, self.num_workers, self.prefetch = mapper, list(records), num_workers, prefetch

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __iter__(self) -> PrefetchIterator | _SyncIterator:
        jobs = ((None, [r]) for r in self.dataset_dicts)
        return _make_iterator(jobs, self.mapper, lambda _, items: items[0], self.num_workers, False, self.prefetch)


def build_test_loader(cfg, dataset_dicts: Sequence[dict], *, process_index: int | None = None,
                      process_count: int | None = None, num_workers: int | None = None) -> TestLoader:
    """The evaluation loader (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, INPUT.FORMAT) of this host's shard."""
    process_index, process_count = _process_shard(process_index, process_count)
    mapper = TestMapper(cfg.INPUT.FORMAT, int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return TestLoader(mapper, list(dataset_dicts)[process_index::process_count], int(workers))

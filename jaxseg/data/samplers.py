"""Which images go in which training batch: filtering, aspect-ratio buckets and the infinite sampler.

As detectron2's training loader: images without non-crowd annotations dropped when
DATALOADER.FILTER_EMPTY_ANNOTATIONS; an infinite stream of per-epoch shuffles (TrainingSampler, or
RepeatFactorTrainingSampler) grouped by aspect ratio (w > h or not) so that a batch has one padded
size: the landscape or the portrait bucket, each the largest size the resize can produce on this
dataset rounded up to the model's size divisibility (one square-ish bucket without
ASPECT_RATIO_GROUPING).

Determinism: the global batch plan (`BatchPlan`) depends only on (seed, dataset, IMS_PER_BATCH), and
batch k is computed without the loader having produced batches 0..k-1, so a resumed run sees the same
batches; each host takes its slice of every global batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from jaxseg.data.input_spec import round_up
from jaxseg.data.transforms import ResizeShortestEdge, resize_shortest_edge_shape
from jaxseg.errors import UserError

__all__ = ["BatchPlan", "filter_images_without_annotations", "repeat_factors", "sampler_factors", "train_buckets"]

logger = logging.getLogger(__name__)


def filter_images_without_annotations(dataset_dicts: Sequence[dict]) -> list[dict]:
    """The records with at least one non-crowd annotation (detectron2's FILTER_EMPTY_ANNOTATIONS)."""
    kept = [r for r in dataset_dicts if any(not a.get("iscrowd", 0) for a in r.get("annotations", ()))]
    if len(kept) < len(dataset_dicts):
        logger.info("removed %d images without non-crowd annotations; %d left", len(dataset_dicts) - len(kept),
                    len(kept))
    return kept


def train_buckets(records: Sequence[dict], resize: ResizeShortestEdge, size_divisibility: int,
                  grouping: bool = True) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The padded (Hp, Wp) per bucket and each record's bucket.

    With grouping: bucket 0 holds the images with w > h, bucket 1 the others (as detectron2's
    AspectRatioGroupedDataset); each is the largest resized size its images can get (longest short
    edge, capped by the max size), each side rounded up to ``size_divisibility`` (the model's
    ``input_spec.size_divisibility``). Without grouping: one bucket that fits all.
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
        buckets.append((round_up(int(hw[0]), size_divisibility), round_up(int(hw[1]), size_divisibility)))
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


def sampler_factors(cfg, records: Sequence[dict]) -> np.ndarray | None:
    """Per-image repeat factors for RepeatFactorTrainingSampler (DATALOADER.*), None for TrainingSampler."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return None
    if name == "RepeatFactorTrainingSampler":
        return repeat_factors(records, cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.REPEAT_SQRT)
    raise UserError(f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported; use TrainingSampler or "
                    "RepeatFactorTrainingSampler")

"""Static-shape training and evaluation batches, built on the host in background workers.

The loaders take the model's `InputSpec` (channel order, resize rule, sizes, padding) and, for
training, its `TargetSpec` (which ground truth to build); they read no INPUT.* sizes themselves, so
the predictor and the loaders share one implementation of every resize and pad rule.

Training batch layout (a dict of numpy arrays; B = local batch size, G = DATALOADER.MAX_GT_INSTANCES,
s = target_spec.bitmask_stride, t = target_spec.thing_semantic_stride, (Hp, Wp) the batch's bucket, S and P
the polygon capacity):

=================  ======================  ==========================================================
images             (B, Hp, Wp, C) uint8    input_spec.format channel order, zero padding right/bottom
image_hw           (B, 2) int32            resized image size inside the padding
gt_boxes           (B, G, 4) float32       XYXY in resized-image pixels (zero where not valid)
gt_classes         (B, G) int32            contiguous class ids (zero where not valid)
gt_valid           (B, G) bool             which of the G slots hold an instance
gt_polygon_xy      (B, G, S, 2, 2) u32     float64 polygon vertices as bit patterns (target_spec.polygons;
gt_polygon_id      (B, G, S) int32         see jaxseg.data.masks.pack_polygons: S vertex slots and P
gt_polygon_start   (B, G, P) int32         polygons per instance, the most of any instance of the dataset)
gt_bitmasks        (B, G, Hp/s, Wp/s) u8   0/1 full-image mask at stride s (only when s > 0)
gt_thing_semantic  (B, Hp/t, Wp/t) int32   thing-semantic map at stride t: contiguous class id + 1, 0
                                           background and padding (t > 0; see jaxseg.data.semantic)
image_id           (B,) int64              the dataset's image id
=================  ======================  ==========================================================

The ground-truth keys are exactly ``target_spec.keys()``; `jaxseg.data.masks` gives the frames of
the two mask forms, `jaxseg.data.semantic` the thing-semantic map, `jaxseg.data.mappers` the
augmentation, `jaxseg.data.samplers` the batch plan and its buckets (each side rounded up to
``input_spec.size_divisibility``), `jaxseg.data.workers` the background execution.

Determinism: the global batch plan depends only on (seed, dataset, IMS_PER_BATCH); the augmentation
of the sample at position p of epoch e's stream draws from ``numpy.random.default_rng([seed, 1, e, p])``.
So ``loader.batches(k)`` gives exactly what iterating from 0 gives from step k on, and the global
batch is the same whatever the number of hosts. Each host (``process_index`` of ``process_count``)
reads only its slice of every global batch, so hosts read disjoint images.

Evaluation: one image at a time, resized and padded by ``input_spec.prepare_test_image`` (so
TEST.BUCKETS, ``input_spec.buckets``, applies as in the predictor); host ``i`` of ``n`` gets records
``i, i + n, ...``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from jaxseg.data.input_spec import InputSpec
from jaxseg.data.mappers import TestMapper, TrainMapper, collate_train, train_augmentations
from jaxseg.data.masks import polygon_capacity
from jaxseg.data.samplers import BatchPlan, filter_images_without_annotations, sampler_factors, train_buckets
from jaxseg.data.target_spec import TargetSpec
from jaxseg.data.workers import PrefetchIterator, SyncIterator, make_iterator
from jaxseg.errors import UserError

__all__ = ["TestLoader", "TrainLoader", "build_test_loader", "build_train_loader"]


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
        global_batch_size, local_batch_size, process_index, process_count; mapper: the sample function
        (its ``target_spec`` says which ground truth the batches hold); polygon_capacity: (vertex slots,
        polygons) per instance of the polygon keys, from the whole dataset (so every batch has one shape).
    """

    def __init__(self, mapper: TrainMapper, plan: BatchPlan, buckets: list[tuple[int, int]], *,
                 global_batch_size: int, process_index: int, process_count: int, num_workers: int,
                 use_processes: bool = False, prefetch: int = 2) -> None:
        self.mapper, self.plan, self.buckets = mapper, plan, buckets
        self.dataset_dicts = mapper.records
        self.target_spec = mapper.target_spec
        self.polygon_capacity = polygon_capacity(mapper.records) if self.target_spec.polygons else (0, 0)
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

    def batches(self, start_step: int = 0) -> PrefetchIterator | SyncIterator:
        """Batches from ``start_step`` on, made in the background; close the iterator (or use ``with``) when done."""

        def jobs() -> Iterator[tuple[int, list]]:
            step = start_step
            while True:
                keys, bucket = self.keys(step)
                yield bucket, [tuple(int(v) for v in k) for k in keys]
                step += 1

        return make_iterator(jobs(), self.mapper, self._collate, self.num_workers, self.use_processes, self.prefetch)

    def __iter__(self) -> PrefetchIterator | SyncIterator:
        return self.batches(0)

    def _collate(self, bucket: int, samples: list[dict]) -> dict[str, np.ndarray]:
        return collate_train(samples, self.buckets[bucket], self.mapper.max_instances, self.target_spec,
                             self.polygon_capacity)


def _check_target_spec(target_spec: TargetSpec, buckets: Sequence[tuple[int, int]]) -> None:
    """UserError for ground truth the loader cannot build (semantic) or a stride that splits a bucket."""
    if target_spec.semantic:
        raise UserError("the model's target spec asks for gt_semantic: semantic/panoptic ground truth is not "
                        "built by jaxseg's loader yet")
    strides = {"bitmask": target_spec.bitmask_stride, "thing-semantic": target_spec.thing_semantic_stride}
    for name, stride in strides.items():
        if stride < 0:
            raise UserError(f"the target spec's {name} stride must be >= 0, got {stride}")
        if stride and any(hp % stride or wp % stride for hp, wp in buckets):
            raise UserError(f"{name} stride {stride} does not divide the padded training sizes {list(buckets)}; "
                            "the model's size divisibility must be a multiple of it")


def build_train_loader(cfg, dataset_dicts: Sequence[dict], input_spec: InputSpec, target_spec: TargetSpec, *,
                       seed: int, process_index: int | None = None, process_count: int | None = None,
                       num_workers: int | None = None, use_processes: bool = False,
                       prefetch: int = 2) -> TrainLoader:
    """The training loader of this host for ``dataset_dicts`` (records as from ``get_dataset_dicts``).

    Args:
        cfg: reads INPUT.RANDOM_FLIP and INPUT.CROP, DATALOADER.* (workers, grouping, sampler, filtering,
            MAX_GT_INSTANCES) and SOLVER.IMS_PER_BATCH (global).
        input_spec: the model's ``input_spec``: channel order, training resize, size divisibility.
        target_spec: the model's ``target_spec``: the ground truth the batches hold.
        seed: a non-negative int; the batches are a function of it.
        process_index, process_count: this host's place (default ``jax.process_index()/process_count()``).
        num_workers: background workers (default DATALOADER.NUM_WORKERS); 0 loads in the caller's thread.
        use_processes: worker processes instead of threads.
        prefetch: batches kept ready ahead of the consumer.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"the training loader needs a non-negative integer seed, got {seed!r}")
    _check_target_spec(target_spec, ())
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
    resize, flip = train_augmentations(cfg, input_spec)
    buckets, group = train_buckets(records, resize, input_spec.size_divisibility, cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    _check_target_spec(target_spec, buckets)
    plan = BatchPlan(group, batch_size, int(seed), sampler_factors(cfg, records))
    mapper = TrainMapper(records=records, image_format=input_spec.format, resize=resize, flip=flip,
                         max_instances=int(cfg.DATALOADER.MAX_GT_INSTANCES), target_spec=target_spec, seed=int(seed))
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return TrainLoader(mapper, plan, buckets, global_batch_size=batch_size, process_index=process_index,
                       process_count=process_count, num_workers=int(workers), use_processes=use_processes,
                       prefetch=prefetch)


# ----------------------------------------------------------------------------------------------
# Evaluation loader


class TestLoader:
    """Evaluation images of this host, in dataset order, prepared in the background.

    Each item: ``image`` (1, Hp, Wp, C) uint8 resized and padded by the input spec (a TEST.BUCKETS
    bucket, else multiples of the size divisibility), ``image_hw`` (1, 2) int32 resized size,
    ``orig_hw`` (1, 2) int32, ``image_id``, ``file_name``.
    """

    def __init__(self, mapper: TestMapper, records: Sequence[dict], num_workers: int, prefetch: int = 4) -> None:
        self.mapper, self.dataset_dicts, self.num_workers, self.prefetch = mapper, list(records), num_workers, prefetch
        self.input_spec = mapper.input_spec

    def __len__(self) -> int:
        return len(self.dataset_dicts)

    def __iter__(self) -> PrefetchIterator | SyncIterator:
        jobs = ((None, [r]) for r in self.dataset_dicts)
        return make_iterator(jobs, self.mapper, lambda _, items: items[0], self.num_workers, False, self.prefetch)


def build_test_loader(cfg, dataset_dicts: Sequence[dict], input_spec: InputSpec, *,
                      process_index: int | None = None, process_count: int | None = None,
                      num_workers: int | None = None) -> TestLoader:
    """The evaluation loader of this host's shard; images as the model's ``input_spec`` prepares them.

    cfg: only DATALOADER.NUM_WORKERS (the default of ``num_workers``).
    """
    process_index, process_count = _process_shard(process_index, process_count)
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return TestLoader(TestMapper(input_spec), list(dataset_dicts)[process_index::process_count], int(workers))

"""COCO-format instance datasets: an annotation json plus an image folder, read with pycocotools.

:func:`load_coco_json` turns a json into detectron2-style records, with the same rules as detectron2:

* images are sorted by id, ``file_name`` is joined to ``image_root``;
* ``category_id`` becomes the *contiguous* index 0..K-1 of the category in the sorted list of the
  json's category ids (COCO's ids 1..90 with gaps map to 0..79); the classes, the id map, the json
  and the image folder go into the dataset's metadata when a name is given;
* polygons with fewer than 3 points (fewer than 6 coordinates, or an odd count) are dropped, and an
  annotation left with no polygon is dropped entirely; RLE with uncompressed (list) counts is
  compressed; crowd annotations are kept (with ``iscrowd`` 1) for the training mapper to remove;
* images without annotations are kept (the training loader filters them when asked).

Importing this module registers detectron2's builtin COCO names (``coco_2017_train``,
``coco_2017_val``, the 2014 splits, ...) under ``$DETECTRON2_DATASETS`` (default ``./datasets``),
the synthetic ``shapes_train`` / ``shapes_val``, and, when tensorflow-datasets is installed,
``coco_2017_train_tfds`` / ``coco_2017_val_tfds`` (boxes only: TFDS' coco has no masks).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from jaxseg.data import catalog
from jaxseg.data.builtin_meta import coco_instances_meta
from jaxseg.errors import UserError

__all__ = [
    "annotation_to_mask",
    "datasets_root",
    "load_coco_json",
    "load_tfds_coco",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)

# detectron2's builtin COCO instance splits: name -> (image folder, annotation json), relative to the root.
BUILTIN_COCO_SPLITS: dict[str, tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

TFDS_SPLITS: dict[str, str] = {"coco_2017_train_tfds": "train", "coco_2017_val_tfds": "validation"}

_ANNOTATION_KEYS = ("iscrowd", "bbox", "category_id")


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (``~`` expanded), or ``datasets`` when it is unset, as in detectron2."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


# ----------------------------------------------------------------------------------------------
# Reading a json


def load_coco_json(json_file: str | os.PathLike, image_root: str | os.PathLike,
                   dataset_name: str | None = None) -> list[dict]:
    """Read a COCO instances json into detectron2-style records.

    Args:
        json_file: the annotation file.
        image_root: the folder the json's ``file_name`` entries are relative to.
        dataset_name: when given, the dataset's metadata gets ``thing_classes``,
            ``thing_dataset_id_to_contiguous_id``, ``json_file``, ``image_root`` and
            ``evaluator_type`` "coco" (a builtin name's classes must agree with the json).

    Returns:
        One dict per image: ``file_name``, ``height``, ``width``, ``image_id`` and ``annotations``, a
        list of ``{bbox (XYWH, absolute), bbox_mode "XYWH_ABS", category_id (contiguous), iscrowd,
        segmentation (list of polygons, or an RLE dict with compressed counts)}``.

    Raises:
        UserError: the json is missing or unreadable, or an annotation is malformed.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    coco = _read_coco_api(json_file)
    cat_ids = sorted(coco.getCatIds())
    id_map = {cat_id: index for index, cat_id in enumerate(cat_ids)}
    if dataset_name is not None:
        classes = [coco.cats[cat_id]["name"] for cat_id in cat_ids]
        catalog.update_metadata(
            dataset_name, thing_classes=classes, thing_dataset_id_to_contiguous_id=id_map,
            json_file=json_file, image_root=image_root, evaluator_type="coco",
        )
    records, dropped = [], 0
    for image_id in sorted(coco.imgs):
        record, num_dropped = _image_record(coco, image_id, image_root, id_map, json_file)
        records.append(record)
        dropped += num_dropped
    if dropped:
        logger.warning("%s: dropped %d annotations without a valid polygon (fewer than 3 points)", json_file, dropped)
    logger.info("loaded %d images from %s", len(records), json_file)
    return records


def coco_json_metadata(json_file: str | os.PathLike) -> dict[str, Any]:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` of a json, without building records."""
    coco = _read_coco_api(os.fspath(json_file))
    cat_ids = sorted(coco.getCatIds())
    return {
        "thing_classes": [coco.cats[cat_id]["name"] for cat_id in cat_ids],
        "thing_dataset_id_to_contiguous_id": {cat_id: index for index, cat_id in enumerate(cat_ids)},
    }


def _read_coco_api(json_file: str):
    """A pycocotools ``COCO`` object for ``json_file`` (its prints silenced); UserError when unreadable."""
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise UserError(f"COCO annotation file not found: {json_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise UserError(f"cannot read COCO annotation file {json_file}: {type(err).__name__}: {err}") from err


def _image_record(coco, image_id: int, image_root: str, id_map: Mapping[int, int],
                  json_file: str) -> tuple[dict, int]:
    """The record of one image and the number of its annotations dropped for lack of a valid polygon."""
    info = coco.imgs[image_id]
    record = {
        "file_name": os.path.join(image_root, info["file_name"]),
        "height": int(info["height"]),
        "width": int(info["width"]),
        "image_id": image_id,
    }
    annotations, dropped = [], 0
    for anno in coco.imgToAnns.get(image_id, []):
        obj = _annotation_record(anno, id_map, json_file)
        if obj is None:
            dropped += 1
        else:
            annotations.append(obj)
    record["annotations"] = annotations
    return record, dropped


def _annotation_record(anno: dict, id_map: Mapping[int, int], json_file: str) -> dict | None:
    """One annotation in record form, or None when its segmentation has no valid polygon."""
    where = f"annotation {anno.get('id')} of image {anno.get('image_id')} in {json_file}"
    if anno.get("ignore", 0):
        raise UserError(f"{where} has 'ignore' set, which COCO-format loading does not support")
    bbox = anno.get("bbox")
    if bbox is None or len(bbox) != 4:
        raise UserError(f"{where} has no valid 'bbox' (expected [x, y, width, height], got {bbox!r})")
    if anno.get("category_id") not in id_map:
        raise UserError(f"{where} has category_id {anno.get('category_id')!r}, which is not in the json's categories")
    obj = {key: anno[key] for key in _ANNOTATION_KEYS if key in anno}
    obj["bbox"] = [float(v) for v in bbox]
    obj["bbox_mode"] = "XYWH_ABS"
    obj["category_id"] = id_map[anno["category_id"]]
    obj["iscrowd"] = int(anno.get("iscrowd", 0))
    segm = anno.get("segmentation")
    if segm:
        segm = _clean_segmentation(segm, where)
        if segm is None:
            return None
        obj["segmentation"] = segm
    return obj


def _clean_segmentation(segm: Any, where: str) -> list[list[float]] | dict | None:
    """Polygons without the degenerate ones (None if none is left), or an RLE with compressed counts."""
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise UserError(f"{where} has an RLE segmentation without 'counts' and 'size'")
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    if not isinstance(segm, list):
        raise UserError(f"{where} has a segmentation of type {type(segm).__name__}; expected polygons or RLE")
    polygons = [[float(v) for v in poly] for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]
    return polygons or None


# ----------------------------------------------------------------------------------------------
# Masks


def annotation_to_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Rasterize a COCO segmentation into an (height, width) uint8 0/1 mask.

    ``segmentation`` is a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` (their union is taken) or
    an RLE dict whose ``counts`` are compressed (str/bytes) or uncompressed (a list of ints).

    Raises:
        UserError: an RLE whose size differs from (height, width), or an unknown format.
    """
    if isinstance(segmentation, dict):
        rle = segmentation
        if list(rle.get("size", ())) != [height, width]:
            raise UserError(f"RLE of size {rle.get('size')} does not match the image size {[height, width]}")
        if isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, height, width)
        return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)
    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in segmentation]
        polygons = [p for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
        return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)
    raise UserError(f"unknown segmentation format {type(segmentation).__name__}; expected polygons or RLE")


# ----------------------------------------------------------------------------------------------
# Registration


def register_coco_instances(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike,
                            **metadata: Any) -> None:
    """Register a COCO-format dataset under ``name`` (loaded on first use, as in detectron2).

    Extra keyword arguments are stored as metadata.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)

    def loader() -> list[dict]:
        return load_coco_json(json_file, image_root, name)

    catalog.register_dataset(name, loader, json_file=json_file, image_root=image_root,
                             evaluator_type="coco", **metadata)


def _builtin_coco_loader(name: str, image_dir: str, json_rel: str):
    """Loader of a builtin COCO split; paths resolve under :func:`datasets_root` when it runs."""

    def loader() -> list[dict]:
        root = datasets_root()
        json_file, image_root = os.path.join(root, json_rel), os.path.join(root, image_dir)
        if not os.path.isfile(json_file):
            raise UserError(
                f"dataset {name!r}: annotation file not found at {json_file}; it is looked up under "
                f"$DETECTRON2_DATASETS (now {root!r}) as {json_rel}, the layout detectron2 uses"
            )
        if not os.path.isdir(image_root):
            raise UserError(f"dataset {name!r}: image folder not found at {image_root} (under $DETECTRON2_DATASETS)")
        meta = catalog.get_metadata(name)
        meta.update(json_file=json_file, image_root=image_root)
        return load_coco_json(json_file, image_root, name)

    return loader


def _shapes_loader(name: str, split: str):
    """Loader of the synthetic shapes split: generates it on first use, then reads its json."""

    def loader() -> list[dict]:
        from jaxseg.data import shapes

        json_file, image_root = shapes.prepare(split)
        return load_coco_json(json_file, image_root, name)

    return loader


def _register_builtin() -> None:
    """Register the builtin names once (importing this module twice must not fail)."""
    known = set(catalog.list_datasets())
    for name, (image_dir, json_rel) in BUILTIN_COCO_SPLITS.items():
        if name not in known:
            catalog.register_dataset(name, _builtin_coco_loader(name, image_dir, json_rel),
                                     evaluator_type="coco", **coco_instances_meta())
    for split in ("train", "val"):
        name = f"shapes_{split}"
        if name not in known:
            catalog.register_dataset(name, _shapes_loader(name, split), evaluator_type="coco")
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        for name, split in TFDS_SPLITS.items():
            if name not in known:
                catalog.register_dataset(name, _tfds_loader(name, split), evaluator_type="coco",
                                         **coco_instances_meta())


# ----------------------------------------------------------------------------------------------
# TensorFlow Datasets: coco/2017 as a second source (boxes and classes only)


def tfds_data_dir(data_dir: str | None = None) -> str:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS' own default)."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def find_prepared_tfds_coco(data_dir: str | None = None) -> str | None:
    """The folder of the newest prepared ``coco/2017`` version under the TFDS data dir, or None."""
    base = os.path.join(tfds_data_dir(data_dir), "coco", "2017")
    if not os.path.isdir(base):
        return None
    versions = [v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, "dataset_info.json"))]
    if not versions:
        return None
    newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
    return os.path.join(base, newest)


def load_tfds_coco(split: str = "validation", data_dir: str | None = None,
                   image_dir: str | None = None) -> list[dict]:
    """Records from a prepared TFDS ``coco/2017`` split; images are written once as files under ``image_dir``.

    TFDS' coco has boxes, classes (already contiguous, in COCO's sorted-id order), crowd flags and
    image ids, but no segmentations: the records suit box-only training and evaluation. Reading
    needs the ``array_record`` file format (no TensorFlow) or TensorFlow installed.

    Raises:
        UserError: tensorflow-datasets is not installed or coco/2017 is not prepared.
    """
    tfds = _import_tfds()
    prepared = find_prepared_tfds_coco(data_dir)
    if prepared is None:
        raise UserError(
            f"TFDS coco/2017 is not prepared under {tfds_data_dir(data_dir)} "
            "(run tfds.builder('coco/2017').download_and_prepare() or set $TFDS_DATA_DIR)"
        )
    image_dir = image_dir or os.path.join(prepared, "jaxseg_images", split)
    os.makedirs(image_dir, exist_ok=True)
    records = [tfds_example_to_record(example, image_dir) for example in _tfds_examples(tfds, prepared, split)]
    return sorted(records, key=lambda r: r["image_id"])  # image-id order, as load_coco_json gives


def _import_tfds():
    """``tensorflow_datasets``, or a UserError saying it is not installed."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise UserError("tensorflow-datasets is not installed (pip install tensorflow-datasets)") from err
    return tfds


def _tfds_examples(tfds, prepared_dir: str, split: str) -> Iterable[Mapping[str, Any]]:
    """The examples of ``split`` with undecoded images: by random access, else through TensorFlow."""
    builder = tfds.builder_from_directory(prepared_dir)
    decoders = {"image": tfds.decode.SkipDecoding()}
    try:
        source = builder.as_data_source(split=split, decoders=decoders)
        return (source[i] for i in range(len(source)))
    except Exception as err:  # tfrecord-format datasets have no random access; TFDS' errors vary
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError(
                f"cannot read TFDS coco/2017 at {prepared_dir} without TensorFlow ({type(err).__name__}: {err}); "
                "prepare it with file_format='array_record' or install tensorflow"
            ) from err
        return tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders, shuffle_files=False))


def tfds_example_to_record(example: Mapping[str, Any], image_dir: str) -> dict:
    """One TFDS coco example (image undecoded) as a record; the encoded image is written to ``image_dir``.

    TFDS boxes are normalized (ymin, xmin, ymax, xmax); records hold absolute XYWH like COCO's json.
    """
    from PIL import Image

    encoded = example["image"]
    encoded = encoded if isinstance(encoded, bytes) else bytes(np.asarray(encoded).item())
    file_name = _as_str(example["image/filename"])
    path = os.path.join(image_dir, os.path.basename(file_name))
    if not os.path.isfile(path):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(encoded)
        os.replace(tmp, path)
    with Image.open(io.BytesIO(encoded)) as image:
        width, height = image.size
    objects = example.get("objects", {})
    boxes = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    labels = np.asarray(objects.get("label", np.zeros(0)), np.int64).ravel()
    crowd = np.asarray(objects.get("is_crowd", np.zeros(len(labels))), bool).ravel()
    annotations = []
    for (ymin, xmin, ymax, xmax), label, is_crowd in zip(boxes, labels, crowd):
        x0, y0 = xmin * width, ymin * height
        bbox = [float(x0), float(y0), float(xmax * width - x0), float(ymax * height - y0)]
        annotations.append({"bbox": bbox, "bbox_mode": "XYWH_ABS", "category_id": int(label),
                            "iscrowd": int(is_crowd)})
    return {"file_name": path, "height": int(height), "width": int(width),
            "image_id": int(example["image/id"]), "annotations": annotations}


def _as_str(value: Any) -> str:
    """A TFDS text feature (bytes, str or a 0-d array) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_loader(name: str, split: str):
    """Loader of a TFDS coco/2017 split registered under ``name``."""

    def loader() -> list[dict]:
        return load_tfds_coco(split)

    return loader


def write_coco_json(path: str | os.PathLike, images: list[dict], annotations: list[dict],
                    categories: list[dict]) -> str:
    """Write a minimal COCO instances json (used by tests and benchmarks); return its path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


_register_builtin()

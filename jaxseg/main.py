"""python -m jaxseg.main --config CFG [--predict IMG ... --output DIR] [--eval-only] [KEY VALUE ...]

Flags and trailing KEY VALUE overrides follow detectron2's tools/train_net.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jaxseg.cli_utils import run_cli
from jaxseg.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxseg.main", description="jaxseg: train, evaluate or predict.")
    p.add_argument("--config", "--config-file", dest="config", default="", metavar="FILE", help="config YAML")
    p.add_argument("--predict", nargs="+", metavar="IMG", help="images to run the model on")
    p.add_argument("--output", metavar="DIR", help="where --predict writes pictures and coco_instances_results.json")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST")
    p.add_argument("--resume", action="store_true", help="resume training from OUTPUT_DIR's last checkpoint")
    p.add_argument("--num-devices", type=int, default=0, help="devices for sharded training (0: all)")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="--predict: only instances scoring at least this are drawn (all go to the json)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p.parse_args(argv)


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.config:
        raise UserError("--config FILE is required")
    from jaxseg.config import setup_cfg

    cfg = setup_cfg(args.config, args.opts)
    if args.predict:
        if not args.output:
            raise UserError("--predict needs --output DIR")
        return predict(cfg, args.predict, args.output, args.confidence_threshold)
    if args.eval_only:
        from jaxseg.checkpoint.loading import load_weights
        from jaxseg.engine.inference import evaluate_all
        from jaxseg.engine.sharding import maybe_initialize_distributed

        maybe_initialize_distributed()  # join a multi-process run before anything starts the backend
        evaluate_all(cfg, load_weights(cfg))
        return 0
    return train_and_evaluate(cfg, args)


def train_and_evaluate(cfg, args: argparse.Namespace) -> int:
    """Train on DATASETS.TRAIN, evaluate on DATASETS.TEST, draw predictions of a few test images.

    Multi-process: every process trains and evaluates; process 0 alone draws and prints.
    """
    from jaxseg.engine.inference import evaluate_all
    from jaxseg.engine.sharding import is_main_process
    from jaxseg.engine.train import train
    from jaxseg.evaluation.coco import METRICS

    if args.num_devices < 0:
        raise UserError(f"--num-devices {args.num_devices}: must be 0 (all devices) or a positive count")
    if not cfg.DATASETS.TRAIN:
        raise UserError("DATASETS.TRAIN is empty: nothing to train on (use --eval-only or --predict)")
    eval_fn = (lambda c, model, variables: evaluate_all(c, variables)) if cfg.DATASETS.TEST else None
    variables: dict = {}
    result = train(cfg, num_devices=args.num_devices, resume=args.resume, eval_fn=eval_fn, variables_out=variables)
    if cfg.DATASETS.TEST:
        draw_dataset_predictions(cfg, variables, cfg.DATASETS.TEST[0], os.path.join(cfg.OUTPUT_DIR, "predictions"),
                                 args.confidence_threshold)
    if "eval" in result and is_main_process():  # evaluate_all nests results by dataset when there are several
        names = list(dict.fromkeys(cfg.DATASETS.TEST))
        per_dataset = {names[0]: result["eval"]} if len(names) == 1 else result["eval"]
        for name, tasks in per_dataset.items():
            for task, metrics in tasks.items():
                shown = " ".join(f"{m}={metrics[m]:.3f}" for m in METRICS if m in metrics)
                print(f"final evaluation {name} {task}: {shown}")
    return 0


def draw_dataset_predictions(cfg, variables, dataset_name: str, out_dir: str, confidence: float,
                             num_images: int = 8) -> None:
    """PNGs of the model's predictions on the first images of a dataset (process 0 only draws)."""
    from jaxseg.engine.sharding import is_main_process

    if not is_main_process():
        return
    from jaxseg.data.catalog import get_dataset_dicts, get_metadata
    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor
    from jaxseg.visualize import draw_instances, save_png

    predictor = Predictor(cfg, variables)
    names = get_metadata(dataset_name).get("thing_classes")
    for record in get_dataset_dicts(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format=predictor.input_format)  # the model's channel order
        inst = predictor(image)
        keep = inst.scores >= confidence
        rgb = image[:, :, ::-1] if predictor.input_format == "BGR" else image
        picture = draw_instances(rgb, inst.boxes[keep], inst.scores[keep], inst.classes[keep],
                                 None if inst.masks is None else inst.masks[keep], names)
        save_png(os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"), picture)


def predict(cfg, paths: list[str], out_dir: str, confidence: float) -> int:
    """Run the model on every image; write DIR/<name>.png (names made unique) and DIR/coco_instances_results.json,
    whose file_name is each input path as given."""
    from tqdm import tqdm

    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor
    from jaxseg.evaluation.coco import instances_to_coco_json
    from jaxseg.fileio import write_json_atomic
    from jaxseg.visualize import draw_instances, save_png

    predictor = Predictor(cfg)
    fmt = predictor.input_format  # the model's channel order (its input_spec), not necessarily cfg.INPUT.FORMAT
    images = [read_image(p, format=fmt) for p in paths]  # every input checked before any output
    model = predictor.model
    names = getattr(model, "class_names", None)
    meta = dataset_metadata(cfg, int(model.num_classes), names() if callable(names) else None)
    os.makedirs(out_dir, exist_ok=True)
    ids = image_ids(paths)
    pictures = picture_names(paths)
    results = []
    for path, image, image_id, picture_name in tqdm(list(zip(paths, images, ids, pictures)), desc="predict",
                                                    unit="img"):
        inst = predictor(image)
        rgb = image[:, :, ::-1] if fmt == "BGR" else image
        keep = inst.scores >= confidence
        picture = draw_instances(rgb, inst.boxes[keep], inst.scores[keep], inst.classes[keep],
                                 None if inst.masks is None else inst.masks[keep], meta["thing_classes"])
        save_png(os.path.join(out_dir, picture_name), picture)
        results += instances_to_coco_json(inst, image_id, path, meta["contiguous_to_dataset_id"])
    write_json_atomic(os.path.join(out_dir, "coco_instances_results.json"), results)
    renamed = [f"{p} -> {n}" for p, n in zip(paths, pictures) if n != _stem(p) + ".png"]
    if renamed:
        print("inputs with the same file name, pictures renamed: " + ", ".join(renamed))
    source = f" (classes of {meta['dataset']})" if meta.get("dataset") else ""
    print(f"wrote {len(paths)} pictures and {len(results)} instances to {out_dir}{source}")
    return 0


def dataset_metadata(cfg, num_classes: int, class_names: Sequence[str] | None = None) -> dict:
    """Class names and the contiguous -> dataset category id map of a model with `num_classes` classes.

    From the first registered dataset of DATASETS.TEST, else DATASETS.TRAIN, that has `num_classes` classes;
    else COCO's for 80 classes; else ids 1..K with `class_names` (the model's own, when it knows them) or none.
    Returns {"thing_classes", "contiguous_to_dataset_id", "dataset" (the name it came from, or None)}.
    """
    from jaxseg.data.builtin_meta import COCO_THING_CLASSES, COCO_THING_CONTIGUOUS_TO_DATASET_ID

    for name in dict.fromkeys([*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]):
        classes = dataset_classes(name)
        if classes is not None and len(classes[0]) == num_classes:
            return {"thing_classes": classes[0], "contiguous_to_dataset_id": classes[1], "dataset": name}
    if num_classes == len(COCO_THING_CLASSES):
        return {"thing_classes": list(COCO_THING_CLASSES),
                "contiguous_to_dataset_id": dict(COCO_THING_CONTIGUOUS_TO_DATASET_ID), "dataset": None}
    names = list(class_names) if class_names is not None and len(class_names) == num_classes else None
    return {"thing_classes": names, "contiguous_to_dataset_id": {i: i + 1 for i in range(num_classes)},
            "dataset": None}


def dataset_classes(name: str) -> tuple[list[str], dict[int, int]] | None:
    """(thing_classes, contiguous -> dataset id) of a registered dataset, or None (unknown name, no classes).

    Reads the metadata when it has the classes, else the annotation json it names (no images), else loads
    the dataset (its loader fills the metadata; the shapes splits are generated on first use)."""
    import logging

    from jaxseg.data import catalog

    try:
        meta = catalog.get_metadata(name)
        if "thing_classes" not in meta:
            json_file = meta.get("json_file")
            if json_file and os.path.isfile(json_file):
                from jaxseg.data.coco import coco_json_metadata

                meta = {**meta, **coco_json_metadata(json_file)}
            else:
                catalog.get_dataset_dicts(name)
                meta = catalog.get_metadata(name)
    except UserError as e:
        logging.getLogger(__name__).info("no class names from dataset %r: %s", name, e)
        return None
    classes = meta.get("thing_classes")
    if not classes:
        return None
    to_contiguous = meta.get("thing_dataset_id_to_contiguous_id") or {i + 1: i for i in range(len(classes))}
    return list(classes), {int(c): int(d) for d, c in to_contiguous.items()}


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def picture_names(paths: list[str]) -> list[str]:
    """One PNG name per input: <stem>.png, then <stem>_1.png, <stem>_2.png ... for inputs whose name is taken
    (a/x.jpg and b/x.jpg, or x.jpg and x.png), compared case-insensitively for case-insensitive file systems."""
    taken: set[str] = set()
    names = []
    for path in paths:
        stem, candidate, k = _stem(path), _stem(path) + ".png", 0
        while candidate.lower() in taken:
            k += 1
            candidate = f"{stem}_{k}.png"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def image_ids(paths: list[str]) -> list[int]:
    """COCO-style file names (000000397133.jpg) give their number; otherwise the position in the list."""
    stems = [_stem(p) for p in paths]
    if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(paths)))


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())

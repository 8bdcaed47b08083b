"""python -m jaxseg.main --config CFG [--predict IMG ... --output DIR] [--eval-only] [KEY VALUE ...]

Flags and trailing KEY VALUE overrides follow detectron2's tools/train_net.py.
"""

from __future__ import annotations

import argparse
import os
import sys

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

        evaluate_all(cfg, load_weights(cfg))
        return 0
    return train_and_evaluate(cfg, args)


def train_and_evaluate(cfg, args: argparse.Namespace) -> int:
    """Train on DATASETS.TRAIN, evaluate on DATASETS.TEST, draw predictions of a few test images."""
    from jaxseg.engine.inference import evaluate_all
    from jaxseg.engine.train import train

    if not cfg.DATASETS.TRAIN:
        raise UserError("DATASETS.TRAIN is empty: nothing to train on (use --eval-only or --predict)")
    eval_fn = (lambda c, model, variables: evaluate_all(c, variables)) if cfg.DATASETS.TEST else None
    variables: dict = {}
    result = train(cfg, num_devices=args.num_devices, resume=args.resume, eval_fn=eval_fn, variables_out=variables)
    if cfg.DATASETS.TEST:
        draw_dataset_predictions(cfg, variables, cfg.DATASETS.TEST[0], os.path.join(cfg.OUTPUT_DIR, "predictions"),
                                 args.confidence_threshold)
    if "eval" in result:
        print(f"final evaluation: {result['eval']}")
    return 0


def draw_dataset_predictions(cfg, variables, dataset_name: str, out_dir: str, confidence: float,
                             num_images: int = 8) -> None:
    """PNGs of the model's predictions on the first images of a dataset."""
    from jaxseg.data.catalog import get_dataset_dicts, get_metadata
    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor
    from jaxseg.visualize import draw_instances, save_png

    predictor = Predictor(cfg, variables)
    names = get_metadata(dataset_name).get("thing_classes")
    for record in get_dataset_dicts(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        inst = predictor(image)
        keep = inst.scores >= confidence
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        picture = draw_instances(rgb, inst.boxes[keep], inst.scores[keep], inst.classes[keep],
                                 None if inst.masks is None else inst.masks[keep], names)
        save_png(os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"), picture)


def predict(cfg, paths: list[str], out_dir: str, confidence: float) -> int:
    """Run the model on every image; write DIR/<name>.png and DIR/coco_instances_results.json."""
    from tqdm import tqdm

    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor
    from jaxseg.evaluation.coco import instances_to_coco_json
    from jaxseg.fileio import write_json_atomic
    from jaxseg.visualize import draw_instances, save_png

    images = [read_image(p, format=cfg.INPUT.FORMAT) for p in paths]  # every input checked before any output
    predictor = Predictor(cfg)
    meta = dataset_metadata(cfg)
    os.makedirs(out_dir, exist_ok=True)
    ids = image_ids(paths)
    results = []
    for path, image, image_id in tqdm(list(zip(paths, images, ids)), desc="predict", unit="img"):
        inst = predictor(image)
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        keep = inst.scores >= confidence
        picture = draw_instances(rgb, inst.boxes[keep], inst.scores[keep], inst.classes[keep],
                                 None if inst.masks is None else inst.masks[keep], meta["thing_classes"])
        save_png(os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png"), picture)
        results += instances_to_coco_json(inst, image_id, os.path.basename(path), meta["contiguous_to_dataset_id"])
    write_json_atomic(os.path.join(out_dir, "coco_instances_results.json"), results)
    print(f"wrote {len(paths)} pictures and {len(results)} instances to {out_dir}")
    return 0


def dataset_metadata(cfg) -> dict:
    """Class names and the contiguous -> dataset category id map (COCO for 80-class models)."""
    from jaxseg.data.builtin_meta import COCO_THING_CLASSES, COCO_THING_CONTIGUOUS_TO_DATASET_ID

    n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if n == len(COCO_THING_CLASSES):
        return {"thing_classes": COCO_THING_CLASSES, "contiguous_to_dataset_id": COCO_THING_CONTIGUOUS_TO_DATASET_ID}
    return {"thing_classes": None, "contiguous_to_dataset_id": {i: i + 1 for i in range(n)}}


def image_ids(paths: list[str]) -> list[int]:
    """COCO-style file names (000000397133.jpg) give their number; otherwise the position in the list."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(paths)))


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())

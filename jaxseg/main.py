"""python -m jaxseg.main --config CFG [--predict IMG ... --output DIR] [--eval-only] [KEY VALUE ...]

Flags and trailing KEY VALUE overrides follow detectron2's tools/train_net.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

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
        raise UserError("--eval-only is not available yet: COCO evaluation lands with the data/evaluation issue")
    raise UserError("training is not available yet: it lands with the training issue; use --predict")


def predict(cfg, paths: list[str], out_dir: str, confidence: float) -> int:
    """Run the model on every image; write DIR/<name>.png and DIR/coco_instances_results.json."""
    from tqdm import tqdm

    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor
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


def write_json_atomic(path: str, obj) -> None:
    """Write to a temp file in the same directory, then rename: never a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())

"""One process of tests/test_distributed.py: a short quickstart training run with evaluation, via jaxseg.main.

    python tests/distributed_worker.py --data DIR --output-dir DIR --result FILE [--num-processes N
        --process-id I --port P]

With --num-processes > 1 it joins a localhost jax.distributed run through jaxseg's own environment variables
(JAXSEG_NUM_PROCESSES, JAXSEG_PROCESS_ID, JAXSEG_COORDINATOR), which train() reads. Writes FILE (json): this
process's place, train()'s result, the lines it printed and every file it opened for writing (or renamed)
under --output-dir, seen by an audit hook.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")
TRAIN, TESTS = "dist_shapes_train", ("dist_shapes_val", "dist_shapes_val_copy")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def watch_writes(root: str) -> list[str]:
    """Paths under `root` this process opens for writing, creates by rename, or removes (an audit hook)."""
    root = os.path.realpath(root)
    seen: list[str] = []

    def under(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return None
        path = os.path.realpath(path)
        return path if path == root or path.startswith(root + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        path = None
        if event == "open":
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            path = under(args[0]) if writing else None
        elif event in ("os.rename", "os.replace"):
            path = under(args[1])
        elif event == "os.remove":
            path = under(args[0])
        if path is not None:
            seen.append(os.path.relpath(path, root))

    sys.addaudithook(hook)
    return seen


def register_datasets(data: str) -> None:
    """Generate (once) and register the 16 training and 5 test images (64 px); the test set under two names."""
    from jaxseg.data.coco import register_coco_instances
    from jaxseg.data.shapes import prepare

    register_coco_instances(TRAIN, *prepare("train", data, num_images=16, image_size=64))
    for name in TESTS:
        register_coco_instances(name, *prepare("val", data, num_images=5, image_size=64))


def ground_truth_eval(dataset: str) -> dict:
    """COCOEvaluator fed each process's slice of the images with the ground truth as predictions (AP 100
    only if every process's records reach the scoring), evaluated by all processes together."""
    import pycocotools.mask as mask_util

    from jaxseg.data.catalog import get_metadata
    from jaxseg.engine.sharding import process_info
    from jaxseg.evaluation.coco import COCOEvaluator

    index, count = process_info()
    evaluator = COCOEvaluator(get_metadata(dataset)["json_file"])
    images = sorted(evaluator.dataset["images"], key=lambda im: im["id"])[index::count]
    for im in images:
        records = []
        for a in (a for a in evaluator.dataset["annotations"] if a["image_id"] == im["id"]):
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], im["height"], im["width"])) \
                if isinstance(a["segmentation"], list) else a["segmentation"]
            records.append({"image_id": im["id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")
                                             if isinstance(rle["counts"], bytes) else rle["counts"]}})
        evaluator.process(records)  # no image_ids: every image counts, a slice alone scores below 100
    return evaluator.evaluate()


def make_cfg(output_dir: str):
    """The quickstart config shrunk to 64 px images, 3 iterations, two test datasets."""
    from jaxseg.config import setup_cfg

    return setup_cfg(QUICKSTART, [
        "DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", str(TESTS),
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # an untrained model's detections still count
        "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "0", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "OUTPUT_DIR", output_dir])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="folder with the generated shapes splits")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.num_processes > 1:
        os.environ.update(JAXSEG_NUM_PROCESSES=str(args.num_processes), JAXSEG_PROCESS_ID=str(args.process_id),
                          JAXSEG_COORDINATOR=f"127.0.0.1:{args.port}")
    register_datasets(args.data)

    import jaxseg.engine.train as train_mod
    import jaxseg.main as jmain

    captured: dict = {}
    real_train = train_mod.train

    def train(*a, **kw) -> dict:
        captured.update(real_train(*a, **kw))
        return captured

    train_mod.train = train
    written = watch_writes(args.output_dir)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        jmain.train_and_evaluate(make_cfg(args.output_dir),
                                 argparse.Namespace(num_devices=0, resume=False, confidence_threshold=0.5))
    print(stdout.getvalue())
    gt_eval = ground_truth_eval(TESTS[0])

    import jax

    with open(args.result, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "devices": jax.device_count(), "result": captured, "ground_truth_eval": gt_eval,
                   "written": sorted(set(written)),
                   "stdout": stdout.getvalue().splitlines()}, f)


if __name__ == "__main__":
    main()

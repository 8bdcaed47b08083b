"""inference_on_dataset: run a model over DATASETS.TEST, write COCO results and metrics, print the tables.

Multi-process (jax.distributed): each process predicts its slice of the test set; the COCO results are
gathered on process 0, which scores them and writes the files; every process returns the same metrics.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

from jaxseg.data.catalog import get_dataset_dicts, get_metadata
from jaxseg.engine.predictor import Predictor
from jaxseg.engine.sharding import is_main_process, process_info
from jaxseg.errors import UserError
from jaxseg.evaluation.coco import COCOEvaluator, instances_to_coco_json


def contiguous_to_dataset_id(meta: dict) -> dict[int, int]:
    """Contiguous class index -> the dataset's own category id."""
    return {v: k for k, v in meta["thing_dataset_id_to_contiguous_id"].items()}


def inference_on_dataset(cfg, variables: dict[str, Any], dataset_name: str, output_dir: str,
                         predictor: Predictor | None = None) -> dict[str, dict[str, float]]:
    """Predict every image of `dataset_name` and evaluate with COCO metrics.

    Writes output_dir/coco_instances_results.json and output_dir/metrics.json (atomically, process 0 only).
    A collective in a multi-process run: every process calls it, predicts its own slice of the images
    (`build_test_loader`'s split) and gets the metrics of the whole dataset.
    """
    from jaxseg.data.loaders import build_test_loader

    dicts = get_dataset_dicts(dataset_name)  # loads the dataset (and fills its metadata) on first use
    meta = get_metadata(dataset_name)
    if meta.get("evaluator_type", "coco") != "coco" or "json_file" not in meta:
        raise UserError(f"dataset {dataset_name!r} has no COCO annotation json to evaluate against")
    predictor = predictor or Predictor(cfg, variables)
    to_dataset_id = contiguous_to_dataset_id(meta)
    evaluator = COCOEvaluator(meta["json_file"], output_dir=output_dir)
    index, count = process_info()
    loader = build_test_loader(cfg, dicts, predictor.input_spec, process_index=index, process_count=count)
    with tqdm(total=len(loader), desc=f"inference on {dataset_name}", unit="img", dynamic_ncols=True,
              disable=index != 0) as bar:
        for item in loader:
            inst = predictor.forward(item["image"], tuple(item["image_hw"][0]), tuple(item["orig_hw"][0]))
            name = os.path.basename(item["file_name"])
            evaluator.process(instances_to_coco_json(inst, int(item["image_id"]), name, to_dataset_id),
                              image_ids=[int(item["image_id"])])
            bar.update(1)
    return evaluator.evaluate()


def evaluate_all(cfg, variables: dict[str, Any], predictor: Predictor | None = None) -> dict:
    """Every dataset of DATASETS.TEST, results under OUTPUT_DIR/inference[/<name>] as detectron2 lays them out.

    One dataset: {task: {metric: value}}; several: {dataset: {task: {metric: value}}} (as detectron2's
    DefaultTrainer.test). A name listed twice is evaluated once.
    """
    names = list(dict.fromkeys(cfg.DATASETS.TEST))
    if not names:
        raise UserError("DATASETS.TEST is empty: nothing to evaluate")
    predictor = predictor or Predictor(cfg, variables)
    results = {}
    for name in names:
        out = os.path.join(cfg.OUTPUT_DIR, "inference") if len(names) == 1 else \
            os.path.join(cfg.OUTPUT_DIR, "inference", name)
        if len(names) > 1 and is_main_process():
            print(f"Evaluation results for {name}:")
        results[name] = inference_on_dataset(cfg, variables, name, out, predictor)
    return results[names[0]] if len(names) == 1 else results


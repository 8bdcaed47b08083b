"""python -m jaxseg.evaluate ANNOTATIONS.json RESULTS.json [--out STATS.json] [--tasks bbox segm] [--backend B]

Scores a COCO results file (such as OUTPUT_DIR/inference/coco_instances_results.json) against COCO
annotations offline, with the same COCOeval calls, tables and numbers as the evaluation after training.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxseg.cli_utils import run_cli
from jaxseg.errors import UserError
from jaxseg.evaluation.coco import BACKENDS, TASKS, COCOEvaluator, json_safe, load_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    about = " ".join(__doc__.split("\n\n")[1].split())
    p = argparse.ArgumentParser(prog="python -m jaxseg.evaluate", description=about)
    p.add_argument("annotations", help="COCO instances JSON (ground truth)")
    p.add_argument("results", help="COCO results JSON: a list of {image_id, category_id, bbox, score, segmentation}")
    p.add_argument("--out", metavar="STATS.json", help="also write the metrics here, as metrics.json is written")
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="default: bbox, and segm when the results have masks")
    p.add_argument("--backend", choices=BACKENDS, default="pycocotools",
                   help="COCOeval implementation (default pycocotools; auto: faster_coco_eval when installed)")
    return p.parse_args(argv)


def evaluate_file(annotations: str, results: str, tasks: list[str] | None = None,
                  backend: str | None = None) -> dict[str, dict[str, float]]:
    """Score the results file against every image of the annotations file; print the tables; return metrics."""
    evaluator = COCOEvaluator(annotations, tasks=tasks, backend=backend)
    if "annotations" not in evaluator.dataset:
        raise UserError(f"{annotations} has no 'annotations': there is nothing to evaluate against")
    records = load_results(results)
    try:
        evaluator.process(records)
        return evaluator.evaluate()
    except UserError as e:  # name the file the bad record is in
        raise UserError(f"{results}: {e}") from None


def check_out_path(path: str) -> None:
    """Fail before the (long) evaluation if --out cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise UserError(f"--out {path}: directory {parent} does not exist")


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        check_out_path(args.out)
    metrics = evaluate_file(args.annotations, args.results, args.tasks, args.backend)
    if args.out:
        from jaxseg.fileio import write_json_atomic

        write_json_atomic(args.out, json_safe(metrics))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faster R-CNN (MODEL.MASK_ON False) on shapes through the CLI: the loss falls, box AP only, no mask targets.

configs/quickstart/shapes_faster_rcnn.yaml, on a short schedule (40 steps, one device), as
`python -m jaxseg.main --config configs/quickstart/shapes_faster_rcnn.yaml KEY VALUE ...` runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jaxseg.config import setup_cfg
from jaxseg.data import loaders
from jaxseg.data.target_spec import BOX_KEYS
from jaxseg.main import main
from jaxseg.models.registry import build_model

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "quickstart" / "shapes_faster_rcnn.yaml"
MAX_ITER = 40
SHORT_SCHEDULE = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.WARMUP_ITERS", "20", "SOLVER.BASE_LR", "0.01",
                  "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.LOG_PERIOD", "1",
                  "DATALOADER.NUM_WORKERS", "0"]


def _recording_loader(seen: list[dict]):
    """`build_train_loader` whose batches (as the training loop receives them) are logged into `seen`."""
    real = loaders.build_train_loader

    def build(*args, **kwargs):
        loader = real(*args, **kwargs)
        real_batches = loader.batches

        def batches(start_step: int = 0):
            source = real_batches(start_step)

            def logged():
                try:
                    for batch in source:
                        seen.append({k: (np.shape(v), np.asarray(v).dtype.str) for k, v in batch.items()})
                        yield batch
                finally:
                    if hasattr(source, "close"):
                        source.close()

            return logged()

        loader.batches = batches
        return loader

    return build


def test_config_is_box_only():
    cfg = setup_cfg(str(CONFIG))
    assert not cfg.MODEL.MASK_ON and cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    model = build_model(cfg)
    assert model.target_spec.keys() == BOX_KEYS and "gt_masks" not in model.target_spec.keys()


def test_trains_and_reports_box_ap(shapes_root, tmp_path, monkeypatch):
    seen: list[dict] = []
    monkeypatch.setattr(loaders, "build_train_loader", _recording_loader(seen))
    rc = main(["--config", str(CONFIG), "--num-devices", "1", *SHORT_SCHEDULE, "OUTPUT_DIR", str(tmp_path)])
    assert rc == 0
    # the training batches: boxes and classes, no mask ground truth
    assert len(seen) >= MAX_ITER
    for batch in seen:
        assert set(batch) == {"images", "image_hw", "image_id", *BOX_KEYS}, batch
        assert batch["images"][0][1:] == (128, 128, 3)
    # the loss falls: means of the last 20 steps against the first 5. The box regression loss rises while the
    # RPN learns (more proposals match), as in any detector's first steps; objectness and classification fall.
    with open(tmp_path / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for key, factor in (("total_loss", 0.85), ("loss_rpn_cls", 0.4), ("loss_cls", 0.8)):
        values = {r["iteration"]: r[key] for r in records if key in r}
        assert sorted(values) == list(range(MAX_ITER)), key
        first, last = np.mean([values[i] for i in range(5)]), np.mean([values[i] for i in range(20, MAX_ITER)])
        assert last < factor * first, (key, first, last)
    assert "loss_mask" not in records[0]
    assert os.path.isdir(tmp_path / "checkpoints" / str(MAX_ITER))
    # the evaluation: a bbox task, no segm
    final = records[-1]
    assert "bbox/AP" in final and not any(k.startswith("segm/") for k in final), final
    results = json.loads((tmp_path / "inference" / "metrics.json").read_text())
    assert set(results) == {"bbox"}, results
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])
    detections = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert detections and all("bbox" in d and "segmentation" not in d for d in detections)
    assert results["bbox"]["AP50"] is not None and results["bbox"]["AP50"] >= 0.0

"""The plain FCOS box detector (AdelaiDet's OneStageDetector): AdelaiDet's FCOS-Detection config files load and
build its variable tree under AdelaiDet's state-dict names, and the shapes quickstart (configs/quickstart/
shapes_fcos.yaml, on a short schedule) trains with finite, falling loss, predicts boxes without masks and is
evaluated on box AP alone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from train_helpers import (
    QUICKSTART,
    first_and_last_means,
    losses,
    metrics_records,
    register_tiny_shapes,
    short_run_opts,
)

from jaxseg.checkpoint.adelaidet import adelaidet_name_to_path, adelaidet_path_to_name
from jaxseg.checkpoint.detectron2 import to_flax_layout
from jaxseg.checkpoint.loading import abstract_variables
from jaxseg.config import setup_cfg
from jaxseg.data.catalog import get_dataset_dicts
from jaxseg.data.target_spec import BOX_KEYS
from jaxseg.main import main
from jaxseg.models.fcos.one_stage import OneStageDetector
from jaxseg.models.registry import build_model

HERE = Path(__file__).resolve().parent
FCOS_CONFIGS = HERE.parent / "configs" / "FCOS-Detection"
CONFIG = os.path.join(QUICKSTART, "shapes_fcos.yaml")
LOSS_KEYS = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
MAX_ITER = 30
SCHEDULE = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1000"]


def _without_comments(tmp_path: Path, *names: str) -> None:
    """Copies of configs/FCOS-Detection files under tmp_path with the lines starting with '#' dropped (the header
    comment jaxseg adds): AdelaiDet's files as published."""
    for name in names:
        text = (FCOS_CONFIGS / name).read_text()
        (tmp_path / name).write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("#")))


def test_adelaidet_fcos_config_files_load_unchanged(tmp_path):
    _without_comments(tmp_path, "Base-FCOS.yaml", "R_50_1x.yaml")
    upstream = setup_cfg(str(tmp_path / "R_50_1x.yaml"), [])
    ours = setup_cfg(str(FCOS_CONFIGS / "R_50_1x.yaml"), [])
    assert upstream == ours
    m = ours.MODEL
    assert (m.META_ARCHITECTURE, m.PROPOSAL_GENERATOR.NAME, m.BACKBONE.NAME) == (
        "OneStageDetector", "FCOS", "build_fcos_resnet_fpn_backbone")
    assert m.FCOS.USE_SCALE is True and m.FCOS.THRESH_WITH_CTR is False  # AdelaiDet's defaults, not BlendMask's
    assert m.MASK_ON is False and m.RESNETS.DEPTH == 50 and ours.INPUT.MIN_SIZE_TRAIN == (800,)


def _adelaidet_fcos_names() -> dict[str, tuple[int, ...]]:
    """AdelaiDet's FCOS R-50 state-dict names and shapes: the backbone and FCOS entries of the BlendMask R_50_3x
    fixture's keys (the same modules, 80 classes) plus the per-level `scales` BlendMask does not have
    (USE_SCALE False there)."""
    with open(HERE / "data" / "blendmask_R_50_3x" / "keys.json") as f:
        keys = json.load(f)
    names = {k: tuple(s) for k, s, _ in keys if k.startswith(("backbone.", "proposal_generator."))}
    names.update({f"proposal_generator.fcos_head.scales.{i}.scale": (1,) for i in range(5)})
    return names


def test_r50_1x_builds_adelaidets_fcos_variable_tree():
    model = build_model(setup_cfg(str(FCOS_CONFIGS / "R_50_1x.yaml"), []))
    assert isinstance(model, OneStageDetector) and model.num_classes == 80
    fcos = model.proposal_generator
    assert fcos.use_scale and not fcos.thresh_with_ctr and fcos.norm == "GN"
    flat = flatten_dict(abstract_variables(model))
    ours = {adelaidet_path_to_name(p): v.shape for p, v in flat.items()}
    theirs = _adelaidet_fcos_names()
    assert set(ours) == set(theirs), (sorted(set(ours) - set(theirs))[:5], sorted(set(theirs) - set(ours))[:5])
    for path, v in flat.items():
        name = adelaidet_path_to_name(path)
        assert adelaidet_name_to_path(name) == path, name
        assert v.shape == to_flax_layout(np.zeros(theirs[name], np.float32), path).shape, name
    # a GroupNorm of the class tower: weight and bias parameters of 256 channels, no statistics
    gn = ("params", "proposal_generator", "fcos_head", "cls_tower_1")
    assert adelaidet_name_to_path("proposal_generator.fcos_head.cls_tower.1.weight") == (*gn, "weight")
    assert flat[(*gn, "weight")].shape == flat[(*gn, "bias")].shape == (256,)
    assert not any(p[0] != "params" and "fcos_head" in p for p in flat)


def test_shapes_config_is_box_only():
    cfg = setup_cfg(CONFIG)
    assert cfg.MODEL.META_ARCHITECTURE == "OneStageDetector" and not cfg.MODEL.MASK_ON
    model = build_model(cfg)
    assert isinstance(model, OneStageDetector) and model.num_classes == 6
    assert model.target_spec.keys() == BOX_KEYS
    assert model.train_collections() == ()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, shapes_root) -> tuple[str, str]:
    """(train, test): 32 shapes train images and 16 val images."""
    return (register_tiny_shapes(tmp_path_factory, "tiny_shapes_train"),
            register_tiny_shapes(tmp_path_factory, "tiny_shapes_val", split="val", num_images=16))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets) -> Path:
    """shapes_fcos.yaml trained from scratch for MAX_ITER steps on one device through the CLI."""
    out = tmp_path_factory.mktemp("fcos_train")
    assert main(["--config", CONFIG, "--num-devices", "1", *short_run_opts(datasets[0], out, datasets[1]),
                 *SCHEDULE]) == 0
    return out


@pytest.mark.slow
def test_trains_with_falling_loss_and_reports_box_ap(trained):
    values = losses(trained)
    assert sorted(values) == list(range(MAX_ITER)) and all(np.isfinite(v) for v in values.values())
    # means of the last 10 steps against the first 5 (measured on CPU: total 2.73 -> 1.80, cls 1.11 -> 0.45)
    for key, factor in (("total_loss", 0.8), ("loss_fcos_cls", 0.6)):
        first, last = first_and_last_means(losses(trained, key), 5, range(MAX_ITER - 10, MAX_ITER))
        assert last < factor * first, (key, first, last)
    records = metrics_records(trained)
    assert LOSS_KEYS == {k for k in records[0] if k.startswith("loss_")}, records[0]
    final = records[-1]
    assert "bbox/AP" in final and not any(k.startswith("segm/") for k in final), final
    results = json.loads((trained / "inference" / "metrics.json").read_text())
    assert set(results) == {"bbox"} and {"AP", "AP50", "AP75"} <= set(results["bbox"]), results
    detections = json.loads((trained / "inference" / "coco_instances_results.json").read_text())
    assert all("bbox" in d and "segmentation" not in d for d in detections)


@pytest.mark.slow
def test_eval_only_prints_only_the_bbox_table(trained, datasets, tmp_path, capsys):
    rc = main(["--config", CONFIG, "--eval-only", *short_run_opts(datasets[0], tmp_path, datasets[1]),
               "MODEL.WEIGHTS", str(trained / "checkpoints")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Evaluation results for bbox:" in printed and "segm" not in printed, printed[-2000:]
    table = printed[printed.index("Evaluation results for bbox:"):]
    assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|\s*AP75\s*\|", table)
    assert set(json.loads((tmp_path / "inference" / "metrics.json").read_text())) == {"bbox"}


@pytest.mark.slow
def test_predict_writes_boxes_without_masks(trained, datasets, tmp_path):
    from jaxseg.data.image_io import read_image
    from jaxseg.engine.predictor import Predictor

    paths = [r["file_name"] for r in get_dataset_dicts(datasets[1])[:2]]
    weights = str(trained / "checkpoints" / str(MAX_ITER))
    pred = tmp_path / "pred"
    rc = main(["--config", CONFIG, "--predict", *paths, "--output", str(pred), "--confidence-threshold", "0.0",
               *short_run_opts(datasets[0], tmp_path, datasets[1]), "MODEL.WEIGHTS", weights])
    assert rc == 0
    records = json.loads((pred / "coco_instances_results.json").read_text())
    assert records, "the trained detector finds something"
    for r in records:
        x, y, w, h = r["bbox"]
        assert "segmentation" not in r and w > 0 and h > 0 and x + w <= 128.01 and y + h <= 128.01, r
    predictor = Predictor(setup_cfg(CONFIG, ["MODEL.WEIGHTS", weights]))
    inst = predictor(read_image(paths[0], format=predictor.input_format))
    assert inst.masks is None and len(inst.boxes) == len(inst.scores) > 0

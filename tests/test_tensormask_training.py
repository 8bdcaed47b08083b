"""TensorMask training on the shapes quickstart settings (configs/quickstart/shapes_tensormask.yaml).

A step sharded over 8 devices equals the one-device step: every loss and the updated parameters (the model has
no BatchNorm: GroupNorm backbone, plain convolution heads). Resume is bit-exact. From scratch the loss falls over
30 steps, and `--eval-only` / `--predict` run on the trained checkpoint with boxes and masks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import (
    QUICKSTART,
    assert_replicated,
    assert_trees_close,
    assert_trees_equal,
    first_and_last_means,
    losses,
    metrics_records,
    register_tiny_shapes,
    short_run_opts,
    steps_on_meshes,
    tiny_cfg,
)

from jaxseg.data.catalog import get_dataset_dicts
from jaxseg.data.loaders import build_train_loader
from jaxseg.engine.train import train
from jaxseg.main import main
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow
CONFIG = "shapes_tensormask.yaml"
LOSS_KEYS = {"loss_cls", "loss_box_reg", "loss_mask"}
# a smaller TensorMask for the step and resume checks: 64x64 pictures, one conv per tower, two levels
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "MODEL.TENSOR_MASK.NUM_CONVS", "1",
         "MODEL.TENSOR_MASK.IN_FEATURES", "['p2', 'p3']", "MODEL.ANCHOR_GENERATOR.SIZES", "[[24, 32], [48, 64]]"]
MAX_ITER = 30
SCHEDULE = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()",
            "SOLVER.CHECKPOINT_PERIOD", "1000"]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> str:
    return register_tiny_shapes(tmp_path_factory, "tiny_shapes_train")


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory) -> str:
    return register_tiny_shapes(tmp_path_factory, "tiny_shapes_val", split="val", num_images=16)


def test_sharded_step_equals_single_device(tiny_shapes, tmp_path):
    assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
    # no warmup: the first step moves the parameters by BASE_LR x gradient, far above the tolerance
    cfg = tiny_cfg(CONFIG, tiny_shapes, tmp_path, "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "0", *SMALL)
    model = build_model(cfg)
    assert model.train_collections() == ()
    loader = build_train_loader(cfg, get_dataset_dicts(tiny_shapes), model.input_spec, model.target_spec, seed=0,
                                num_workers=0)
    batch = loader.load_batch(0)
    results = steps_on_meshes(cfg, model, batch)
    (one, m1), (eight, m8) = results[1], results[8]
    assert set(m1) == set(m8) and LOSS_KEYS <= set(m1), m1
    assert m1["loss_mask"] > 0 and m1["loss_box_reg"] > 0, "the batch has foreground anchors"
    for key in ("total_loss", *sorted(LOSS_KEYS)):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
    assert_trees_close(jax.device_get(eight.params), jax.device_get(one.params), rtol=1e-4, atol=1e-6)
    assert_replicated(eight.params, 8)


def test_resume_is_exact(tiny_shapes, tmp_path):
    opts = [*SMALL, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(3,)",
            "SOLVER.WARMUP_ITERS", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    full_vars: dict = {}
    part_vars: dict = {}
    train(tiny_cfg(CONFIG, tiny_shapes, full, *opts), variables_out=full_vars)
    train(tiny_cfg(CONFIG, tiny_shapes, part, *opts), max_iter=2)  # "killed" after step 2's checkpoint
    train(tiny_cfg(CONFIG, tiny_shapes, part, *opts), resume=True, variables_out=part_vars)
    for key in ("total_loss", *sorted(LOSS_KEYS)):
        a, b = losses(full, key), losses(part, key)
        assert sorted(a) == sorted(b) == list(range(4)), key
        assert all(a[i] == b[i] for i in range(4)), (key, a, b)  # bit for bit on CPU
    assert set(full_vars) == {"params"}
    assert_trees_equal(full_vars, part_vars)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_root, tiny_shapes, tiny_val) -> Path:
    """The quickstart TensorMask trained from scratch for MAX_ITER steps on one device through the CLI."""
    out = tmp_path_factory.mktemp("tensormask_train")
    config = os.path.join(QUICKSTART, CONFIG)
    assert main(["--config", config, "--num-devices", "1", *short_run_opts(tiny_shapes, out, tiny_val),
                 *SCHEDULE]) == 0
    return out


def test_loss_falls(trained):
    values = losses(trained)
    assert sorted(values) == list(range(MAX_ITER)) and all(np.isfinite(v) for v in values.values())
    for key, factor in (("total_loss", 0.8), ("loss_cls", 0.7)):
        first, last = first_and_last_means(losses(trained, key), 5, range(MAX_ITER - 10, MAX_ITER))
        assert last < factor * first, (key, first, last)
    records = metrics_records(trained)
    assert LOSS_KEYS <= set(records[0]), records[0]
    assert os.path.isdir(trained / "checkpoints" / str(MAX_ITER))
    final = records[-1]
    assert "bbox/AP" in final and "segm/AP" in final, final


def test_eval_only_reproduces_the_training_run_eval(trained, tiny_shapes, tiny_val, tmp_path):
    config = os.path.join(QUICKSTART, CONFIG)
    rc = main(["--config", config, "--eval-only", *short_run_opts(tiny_shapes, tmp_path, tiny_val), "MODEL.WEIGHTS",
               str(trained / "checkpoints")])
    assert rc == 0
    results = json.loads((tmp_path / "inference" / "metrics.json").read_text())
    trained_results = json.loads((trained / "inference" / "metrics.json").read_text())
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(trained_results[task]["AP"], abs=1e-6, nan_ok=True)


def test_predict_writes_boxes_and_masks(trained, tiny_shapes, tiny_val, tmp_path):
    paths = [r["file_name"] for r in get_dataset_dicts(tiny_val)[:2]]
    config = os.path.join(QUICKSTART, CONFIG)
    pred = tmp_path / "pred"
    weights = str(trained / "checkpoints" / str(MAX_ITER))
    rc = main(["--config", config, "--predict", *paths, "--output", str(pred), "--confidence-threshold", "0.0",
               *short_run_opts(tiny_shapes, tmp_path, tiny_val), "MODEL.WEIGHTS", weights])
    assert rc == 0
    records = json.loads((pred / "coco_instances_results.json").read_text())
    assert records, "the trained model scores some anchor above 0"
    for r in records:
        assert r["segmentation"]["size"] == [128, 128] and 0.0 < r["score"] <= 1.0, r
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and 0 <= x and x + w <= 128 and 0 <= y and y + h <= 128, r
    for p in paths:
        assert (pred / Path(p).name).is_file()

"""Training: the loss falls, a sharded step equals a single-device step, resume is exact, NaN stops cleanly."""

import os

import jax
import numpy as np
import pytest
from train_helpers import assert_replicated, assert_trees_close, losses, register_tiny_shapes, steps_on_meshes
from train_helpers import tiny_cfg as quickstart_cfg

from jaxseg.data.catalog import get_dataset_dicts
from jaxseg.data.loaders import build_train_loader
from jaxseg.engine.train import train
from jaxseg.errors import UserError
from jaxseg.models.registry import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """32 shapes images registered as 'tiny_shapes_train'."""
    return register_tiny_shapes(tmp_path_factory, "tiny_shapes_train")


def tiny_cfg(dataset, out, *opts):
    return quickstart_cfg("shapes_mask_rcnn.yaml", dataset, out, *opts)


def test_loss_falls(tiny_shapes, tmp_path):
    cfg = tiny_cfg(tiny_shapes, tmp_path, "SOLVER.MAX_ITER", "40", "SOLVER.WARMUP_ITERS", "20",
                   "SOLVER.BASE_LR", "0.01", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000")
    train(cfg)
    # total loss: mean of the last 20 steps against the first 5 (box regression rises while the RPN learns,
    # as in any detector's first steps); the objectness and classification losses fall by far more
    for key, factor in (("total_loss", 0.8), ("loss_rpn_cls", 0.4), ("loss_cls", 0.7)):
        loss = losses(tmp_path, key)
        first, last = np.mean([loss[i] for i in range(5)]), np.mean([loss[i] for i in range(20, 40)])
        assert last < factor * first, (key, first, last)
    assert os.path.isdir(tmp_path / "checkpoints" / "40")


def test_resume_is_exact(tiny_shapes, tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.STEPS", "(4,)",
            "SOLVER.WARMUP_ITERS", "2"]
    full = tmp_path / "full"
    train(tiny_cfg(tiny_shapes, full, *opts))
    part = tmp_path / "part"
    train(tiny_cfg(tiny_shapes, part, *opts), max_iter=3)  # "killed" after step 3's checkpoint
    train(tiny_cfg(tiny_shapes, part, *opts), resume=True)
    a, b = losses(full), losses(part)
    assert sorted(a) == sorted(b) == list(range(6))
    assert all(a[i] == b[i] for i in range(6)), (a, b)  # bit for bit on CPU


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_shapes, tmp_path):
    # warmup from lr 1e-3 (a good step 0) straight to 1e29 at step 1: the update there is not finite
    cfg = tiny_cfg(tiny_shapes, tmp_path, "SOLVER.MAX_ITER", "50", "SOLVER.CHECKPOINT_PERIOD", "1",
                   "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "1e-33",
                   "SOLVER.STEPS", "()")
    with pytest.raises(UserError, match="loss became nan at iteration 1 "):
        train(cfg)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps == [1], steps  # the good step's checkpoint, nothing after it
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "1" / "default")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))


@pytest.mark.parametrize("mask_format", ["bitmask", "polygon"])
def test_sharded_step_equals_single_device(tiny_shapes, tmp_path, mask_format):
    """Also for polygon targets (rasterised on each device in float64): shapes without its RLE instances."""
    assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
    cfg = tiny_cfg(tiny_shapes, tmp_path, "SOLVER.IMS_PER_BATCH", "8", "INPUT.MASK_FORMAT", mask_format)
    model = build_model(cfg)
    records = get_dataset_dicts(tiny_shapes)
    if mask_format == "polygon":
        records = [{**r, "annotations": [a for a in r["annotations"] if isinstance(a["segmentation"], list)]}
                   for r in records]
    loader = build_train_loader(cfg, records, model.input_spec, model.target_spec, seed=0, num_workers=0)
    batch = loader.load_batch(0)
    results = steps_on_meshes(cfg, model, batch)
    np.testing.assert_allclose(results[8][1]["total_loss"], results[1][1]["total_loss"], rtol=1e-5)
    assert_trees_close(jax.device_get(results[8][0].params), jax.device_get(results[1][0].params), 1e-4, 1e-6)
    assert_replicated(results[8][0].params, 8, max_leaves=20)  # every device holds the same values


def test_checkpoint_period_zero_saves_only_the_final_state(tiny_shapes, tmp_path):
    """CHECKPOINT_PERIOD 0 (no periodic checkpoints) used to divide by zero at the first step."""
    train(tiny_cfg(tiny_shapes, tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "0",
                   "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0"))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]

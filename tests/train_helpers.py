"""What the training tests of several families share: tiny shapes datasets, short configs derived from a
quickstart file, metrics.json readers, and one training step run on one device and on eight."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from jaxseg.config import setup_cfg
from jaxseg.data.catalog import list_datasets
from jaxseg.data.coco import register_coco_instances
from jaxseg.data.shapes import prepare
from jaxseg.engine import sharding as shd
from jaxseg.engine.train import TrainState, init_train_state, make_train_step, state_sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart")


def register_tiny_shapes(tmp_path_factory, name: str, split: str = "train", num_images: int = 32) -> str:
    """A few shapes images of `split` registered as the COCO-format dataset `name` (once per process)."""
    if name not in list_datasets():
        root = str(tmp_path_factory.mktemp(f"shapes_{split}"))
        json_file, image_root = prepare(split, root=root, num_images=num_images)
        register_coco_instances(name, json_file, image_root)
    return name


def short_run_opts(dataset: str, out, test: str = "") -> list[str]:
    """Overrides of a test run: train on `dataset`, evaluate on `test` (none when empty), log every step,
    write under `out`, load data in the main process."""
    tests = f"('{test}',)" if test else "()"
    return ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", tests, "OUTPUT_DIR", str(out),
            "SOLVER.LOG_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0"]


def tiny_cfg(config: str, dataset: str, out, *opts: str):
    """configs/quickstart/`config` trained on `dataset`, no test set, every step logged, then `opts`."""
    return setup_cfg(os.path.join(QUICKSTART, config), [*short_run_opts(dataset, out), *opts])


def metrics_records(out_dir) -> list[dict]:
    """Every record of OUTPUT_DIR/metrics.json, in file order."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(out_dir, key: str = "total_loss") -> dict[int, float]:
    """{iteration: value} of one logged scalar of OUTPUT_DIR/metrics.json."""
    return {r["iteration"]: r[key] for r in metrics_records(out_dir) if key in r}


def first_and_last_means(values: dict[int, float], first: int, last: range) -> tuple[float, float]:
    """Mean over iterations 0..first-1 and mean over the iterations of `last`."""
    return float(np.mean([values[i] for i in range(first)])), float(np.mean([values[i] for i in last]))


def steps_on_meshes(cfg, model, batch: dict[str, np.ndarray], device_counts: tuple[int, ...] = (1, 8)
                    ) -> dict[int, tuple[TrainState, dict[str, float]]]:
    """One training step on a mesh of each size in `device_counts`, all from the same seed-0 initial state
    (initialised once: the model's init is compiled once): {n: (new state as the devices hold it, metrics)}."""
    state, tx = init_train_state(cfg, model, shd.build_mesh(1), seed=0)
    host = jax.device_get(state)
    results = {}
    for n in device_counts:
        mesh = shd.build_mesh(n)
        state = jax.device_put(host, state_sharding(cfg, mesh, host))
        step = make_train_step(cfg, model, tx, mesh, state, jax.random.PRNGKey(0))
        new, metrics = step(state, shd.global_batch(batch, mesh))
        results[n] = new, {k: float(v) for k, v in jax.device_get(metrics).items()}
    return results


def assert_trees_close(a: Any, b: Any, rtol: float, atol: float) -> None:
    """Same tree structure, every leaf equal to tolerance."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same tree structure, every leaf equal bit for bit."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_replicated(tree: Any, num_devices: int, max_leaves: int | None = None) -> None:
    """Each of the first `max_leaves` leaves (all when None) is held by `num_devices` devices, all equal."""
    for leaf in jax.tree.leaves(tree)[:max_leaves]:
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == num_devices and all(np.array_equal(shards[0], s) for s in shards[1:])


# -- the training checks every family's quickstart test runs (tests/test_<family>_training.py) ----------------


def check_sharded_step(config: str, dataset: str, out, small: list[str], loss_keys: set[str],
                       collections: tuple[str, ...] = ()) -> dict[str, float]:
    """A step over 8 fake devices equals the one-device step (no warmup: the first step moves the parameters by
    BASE_LR x gradient, far above the tolerance); returns the one-device metrics."""
    from jaxseg.data.catalog import get_dataset_dicts
    from jaxseg.data.loaders import build_train_loader
    from jaxseg.models.registry import build_model

    assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
    cfg = tiny_cfg(config, dataset, out, "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "0", *small)
    model = build_model(cfg)
    assert model.train_collections() == collections
    loader = build_train_loader(cfg, get_dataset_dicts(dataset), model.input_spec, model.target_spec, seed=0,
                                num_workers=0)
    results = steps_on_meshes(cfg, model, loader.load_batch(0))
    (one, m1), (eight, m8) = results[1], results[8]
    assert set(m1) == set(m8) and loss_keys <= set(m1), m1
    for key in ("total_loss", *sorted(loss_keys)):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
    assert_trees_close(jax.device_get(eight.params), jax.device_get(one.params), rtol=1e-4, atol=1e-6)
    assert_replicated(eight.params, 8)
    return m1


def check_resume(config: str, dataset: str, out, small: list[str], loss_keys: set[str],
                 collections: set[str]) -> None:
    """4 steps equal 2 steps, a restart and 2 more, bit for bit (losses and variables)."""
    from jaxseg.engine.train import train

    opts = [*small, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(3,)",
            "SOLVER.WARMUP_ITERS", "1"]
    full, part = out / "full", out / "part"
    full_vars: dict = {}
    part_vars: dict = {}
    train(tiny_cfg(config, dataset, full, *opts), variables_out=full_vars)
    train(tiny_cfg(config, dataset, part, *opts), max_iter=2)  # "killed" after step 2's checkpoint
    train(tiny_cfg(config, dataset, part, *opts), resume=True, variables_out=part_vars)
    for key in ("total_loss", *sorted(loss_keys)):
        a, b = losses(full, key), losses(part, key)
        assert sorted(a) == sorted(b) == list(range(4)), key
        assert all(a[i] == b[i] for i in range(4)), (key, a, b)  # bit for bit on CPU
    assert set(full_vars) == collections
    assert_trees_equal(full_vars, part_vars)


def train_through_cli(config: str, out, dataset: str, val: str, max_iter: int, *opts: str) -> None:
    """The quickstart `config` trained from scratch for `max_iter` steps on one device through the CLI."""
    from jaxseg.main import main

    schedule = ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()",
                "SOLVER.CHECKPOINT_PERIOD", "1000"]
    assert main(["--config", os.path.join(QUICKSTART, config), "--num-devices", "1",
                 *short_run_opts(dataset, out, val), *schedule, *opts]) == 0


def check_eval_only_reproduces(config: str, trained, dataset: str, val: str, out, *opts: str) -> None:
    """--eval-only on the training checkpoint gives the training run's final bbox and segm AP."""
    import pytest

    from jaxseg.main import main

    rc = main(["--config", os.path.join(QUICKSTART, config), "--eval-only", *short_run_opts(dataset, out, val),
               "MODEL.WEIGHTS", str(trained / "checkpoints"), *opts])
    assert rc == 0
    results = json.loads((out / "inference" / "metrics.json").read_text())
    trained_results = json.loads((trained / "inference" / "metrics.json").read_text())
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(trained_results[task]["AP"], abs=1e-6, nan_ok=True)


def check_predict(config: str, weights: str, dataset: str, val: str, out, *opts: str, size: int = 128) -> None:
    """--predict on two val pictures writes them and COCO results with in-image boxes and full-size masks."""
    from pathlib import Path

    from jaxseg.data.catalog import get_dataset_dicts
    from jaxseg.main import main

    paths = [r["file_name"] for r in get_dataset_dicts(val)[:2]]
    pred = out / "pred"
    rc = main(["--config", os.path.join(QUICKSTART, config), "--predict", *paths, "--output", str(pred),
               "--confidence-threshold", "0.0", *short_run_opts(dataset, out, val), "MODEL.WEIGHTS", weights, *opts])
    assert rc == 0
    records = json.loads((pred / "coco_instances_results.json").read_text())
    assert records, "the trained model detects something"
    for r in records:
        assert r["segmentation"]["size"] == [size, size] and 0.0 < r["score"] <= 1.0, r
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and 0 <= x and x + w <= size and 0 <= y and y + h <= size, r
    for p in paths:
        assert (pred / Path(p).name).is_file()

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

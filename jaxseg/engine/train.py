"""The training loop: one jitted, sharded step; orbax checkpoints; detectron2-style metrics.json.

    state = init_train_state(cfg, model, mesh)        # random init or MODEL.WEIGHTS, optimizer from SOLVER.*
    for step in range(start, MAX_ITER):              # batches are a pure function of (seed, step): exact resume
        state, metrics = train_step(state, batch)    # losses -> grads -> optax update, all on device
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg.engine import sharding as shd
from jaxseg.engine.optim import build_optimizer, lr_schedule, stop_frozen_gradients
from jaxseg.errors import UserError

logger = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # {collection: tree} of the other variable collections: fixed buffers (FrozenBN) or,
    #                   for the model's train_collections() (trainable BatchNorm), statistics each step updates
    opt_state: Any


def initial_variables(cfg, model, seed: int) -> dict:
    """Random init (on a small dummy image: parameter shapes do not depend on the image size), then
    MODEL.WEIGHTS on top when set (ImageNet R-50.pkl or any checkpoint; missing heads keep their init)."""
    from jaxseg.checkpoint.loading import load_weights

    try:
        variables = jax.jit(model.init)(jax.random.PRNGKey(seed), *model.init_args())
    except ValueError as e:  # a config value the modules reject while building their layers
        raise UserError(f"config: {e}") from None
    variables = jax.tree.map(np.asarray, variables)
    if cfg.MODEL.WEIGHTS:
        variables = load_weights(cfg, cfg.MODEL.WEIGHTS, model=model, initial=variables)
    return dict(variables)


def init_train_state(cfg, model, mesh, seed: int) -> tuple[TrainState, optax.GradientTransformation]:
    variables = initial_variables(cfg, model, seed)
    tx = build_optimizer(cfg, variables["params"], frozen_mask(model, variables["params"]))
    model_state = {k: v for k, v in variables.items() if k != "params"}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], model_state=model_state,
                       opt_state=tx.init(variables["params"]))
    return jax.device_put(state, state_sharding(cfg, mesh, state)), tx


def state_sharding(cfg, mesh, state: TrainState):
    """Replicated, or FSDP for params and optimizer state when MODEL.FSDP (a jaxseg key) is on."""
    rep = shd.replicated(mesh)
    if getattr(cfg.MODEL, "FSDP", False):
        return TrainState(step=rep, params=shd.fsdp_sharding(mesh, state.params),
                          model_state=jax.tree.map(lambda _: rep, state.model_state),
                          opt_state=shd.fsdp_sharding(mesh, state.opt_state))
    return jax.tree.map(lambda _: rep, state)


def make_train_step(cfg, model, tx, mesh, state: TrainState, base_key: jax.Array) -> Callable:
    """jit(step)(state, batch) -> (state, metrics); batch sharded over `data`, state as state_sharding."""
    schedule = lr_schedule(cfg)
    frozen = frozen_mask(model, state.params)
    keys = ("images", "image_hw", *model.target_spec.keys())
    mutable = list(model.train_collections())

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        inputs = {k: batch[k] for k in keys}

        def loss_fn(params):
            variables = {"params": stop_frozen_gradients(params, frozen), **state.model_state}
            if mutable:
                losses, updated = model.apply(variables, key, inputs, method=model.losses, mutable=mutable)
            else:
                losses, updated = model.apply(variables, key, inputs, method=model.losses), {}
            losses = {k: v.astype(jnp.float32) for k, v in losses.items()}
            return sum(losses.values()), (losses, updated)

        (total, (losses, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = {**state.model_state, **updated}
        new = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(params))
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)  # never apply a non-finite step
        return new, {"total_loss": jnp.where(finite, total, jnp.nan), **losses, "lr": schedule(state.step)}

    s_state = state_sharding(cfg, mesh, state)
    return jax.jit(step, in_shardings=(s_state, shd.data_sharding(mesh)), out_shardings=(s_state, None),
                   donate_argnums=(0,))


class MetricsWriter:
    """OUTPUT_DIR/metrics.json (one json object per logged step, as detectron2) and TensorBoard scalars.

    Only process 0 of a multi-process run writes (`enabled` defaults to that); elsewhere every call is a no-op.
    """

    def __init__(self, output_dir: str, resume_step: int = 0, enabled: bool | None = None):
        self.path = os.path.join(output_dir, "metrics.json")
        self.enabled = shd.is_main_process() if enabled is None else bool(enabled)
        self.tb = None
        if not self.enabled:
            return
        if os.path.exists(self.path):  # drop entries past the resume point (a resumed run rewrites them)
            with open(self.path) as f:
                kept = [ln for ln in f if ln.strip() and json.loads(ln).get("iteration", -1) < resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(output_dir)
        except ImportError:
            logger.warning("tensorboardX is not installed: no TensorBoard event files")

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        """Append one record (and its TensorBoard scalars) for `iteration`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"iteration": iteration, **scalars}) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def checkpoint_manager(output_dir: str, max_to_keep: int):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(os.path.abspath(os.path.join(output_dir, "checkpoints")),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def restore_latest(manager, state: TrainState) -> TrainState | None:
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def train(cfg, *, num_devices: int = 0, resume: bool = False, eval_fn: Callable | None = None,
          max_iter: int | None = None, variables_out: dict | None = None) -> dict:
    """Train cfg's model on DATASETS.TRAIN. Returns the last logged scalars (and eval results if eval_fn).

    `max_iter` stops early (for tests; the schedule still follows SOLVER.MAX_ITER); `variables_out`, if
    given, receives the final variables.
    """
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    from jaxseg.data.catalog import get_dataset_dicts
    from jaxseg.data.loaders import build_train_loader
    from jaxseg.engine.predictor import enable_compilation_cache
    from jaxseg.models.registry import build_model

    shd.maybe_initialize_distributed()
    enable_compilation_cache()
    mesh = shd.build_mesh(num_devices)
    shd.check_batch_size(cfg.SOLVER.IMS_PER_BATCH, mesh)
    seed = resolve_seed(cfg.SEED)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    model = build_model(cfg)
    state, tx = init_train_state(cfg, model, mesh, seed)
    manager = checkpoint_manager(cfg.OUTPUT_DIR, max_to_keep=2)
    if resume:
        restored = restore_latest(manager, state)
        if restored is None:
            logger.warning("--resume: no checkpoint in %s; starting from scratch", cfg.OUTPUT_DIR)
        else:
            state = restored
    start = int(state.step)
    total = max_iter or cfg.SOLVER.MAX_ITER
    dicts = [d for name in cfg.DATASETS.TRAIN for d in get_dataset_dicts(name)]
    loader = build_train_loader(cfg, dicts, model.input_spec, model.target_spec, seed=seed)
    step_fn = make_train_step(cfg, model, tx, mesh, state, jax.random.PRNGKey(seed))
    writer = MetricsWriter(cfg.OUTPUT_DIR, start)
    last: dict[str, float] = {}
    log_period = max(cfg.SOLVER.LOG_PERIOD, 1)
    batches = loader.batches(start)
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="it", dynamic_ncols=True,
               disable=not shd.is_main_process())
    try:
        for it in bar:
            t0 = time.perf_counter()
            batch = shd.global_batch(next(batches), mesh)
            t1 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["total_loss"]):
                raise UserError(f"loss became {metrics['total_loss']} at iteration {it} ({_fmt(metrics)}); "
                                f"stopped; the last good checkpoint in {cfg.OUTPUT_DIR}/checkpoints is kept")
            metrics.update(time=time.perf_counter() - t0, data_time=t1 - t0)
            bar.set_postfix_str(_fmt(metrics), refresh=False)
            if (it + 1) % log_period == 0 or it + 1 == total:
                writer.write(it, metrics)
                last = metrics
            period = cfg.SOLVER.CHECKPOINT_PERIOD
            if (period > 0 and (it + 1) % period == 0) or it + 1 == total:
                manager.save(it + 1, args=ocp.args.StandardSave(state))
            if eval_fn is not None and cfg.TEST.EVAL_PERIOD > 0 and (it + 1) % cfg.TEST.EVAL_PERIOD == 0 \
                    and it + 1 != total:
                writer.write(it, _flat_eval(eval_fn(cfg, model, _host_variables(state))))
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
        if hasattr(batches, "close"):
            batches.close()
    result = dict(last)
    variables = _host_variables(state) if variables_out is not None or eval_fn is not None else None
    if variables_out is not None:
        variables_out.update(variables)
    if eval_fn is not None:  # every process evaluates (each its slice of the images, see engine.inference)
        results = eval_fn(cfg, model, variables)
        writer.write(total - 1, _flat_eval(results))
        result["eval"] = results
    writer.close()
    return result


def resolve_seed(seed: int) -> int:
    """SEED as detectron2 reads it: a negative value means a fresh seed for this run (logged, so the run can be
    repeated with SEED set to it); multi-host runs agree on process 0's."""
    if seed >= 0:
        return int(seed)
    fresh = int(np.random.SeedSequence().entropy % (2**31 - 1))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        fresh = int(multihost_utils.broadcast_one_to_all(np.int64(fresh)))
    logger.warning("SEED is %d: using the fresh seed %d (set SEED %d to repeat this run)", seed, fresh, fresh)
    return fresh


def frozen_mask(model, params: dict) -> dict:
    """A bool tree like params: True where the model says a parameter stays fixed (FREEZE_AT)."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    return unflatten_dict({p: bool(model.is_frozen(p)) for p in flatten_dict(params)})


def _variables(state: TrainState) -> dict:
    return {"params": state.params, **state.model_state}


def _host_variables(state: TrainState) -> dict:
    """The variables as numpy arrays on every process (for inference, which runs on each host's own
    devices); parameters sharded over several hosts (MODEL.FSDP) are gathered, a collective."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(fetch, _variables(state))


def _fmt(metrics: dict[str, float]) -> str:
    keys = ["total_loss"] + sorted(k for k in metrics if k.startswith("loss_")) + ["lr"]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def _flat_eval(results: dict, prefix: str = "") -> dict[str, float]:
    """{"bbox": {"AP": ..}} -> {"bbox/AP": ..}, and for several datasets {"ds": {"bbox": {"AP": ..}}} ->
    {"ds/bbox/AP": ..}, as detectron2's flatten_results_dict gives them to its EventStorage."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update(_flat_eval(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat

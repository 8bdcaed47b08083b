"""Optimizer and learning-rate schedule from SOLVER.* (detectron2's build_optimizer / build_lr_scheduler).

SGD with momentum; weight decay WEIGHT_DECAY, WEIGHT_DECAY_NORM on norm parameters, WEIGHT_DECAY_BIAS
(None: same as WEIGHT_DECAY) and BIAS_LR_FACTOR on biases; gradient clipping as CLIP_GRADIENTS says;
parameters frozen by MODEL.BACKBONE.FREEZE_AT never move.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxseg.errors import UserError

logger = logging.getLogger(__name__)


def lr_schedule(cfg) -> Callable[[jax.Array], jax.Array]:
    """Learning rate at each iteration: the main schedule times the warmup factor."""
    s = cfg.SOLVER
    base, gamma, max_iter = s.BASE_LR, s.GAMMA, s.MAX_ITER
    steps = tuple(x for x in s.STEPS if x <= max_iter)
    if len(steps) != len(s.STEPS):  # as detectron2: e.g. a zoo config run with a short SOLVER.MAX_ITER
        dropped = [x for x in s.STEPS if x > max_iter]
        logger.warning("SOLVER.STEPS %s lie beyond SOLVER.MAX_ITER %d and are ignored", dropped, max_iter)
    name = s.LR_SCHEDULER_NAME

    def main(step):
        if name == "WarmupMultiStepLR":
            return base * gamma ** jnp.sum(step >= jnp.asarray(steps, jnp.int32)) if steps else base
        if name == "WarmupCosineLR":
            return s.BASE_LR_END + 0.5 * (base - s.BASE_LR_END) * (1 + jnp.cos(math.pi * step / max_iter))
        raise UserError(f"SOLVER.LR_SCHEDULER_NAME {name!r} is not supported (WarmupMultiStepLR, WarmupCosineLR)")

    def warmup(step):
        if s.WARMUP_ITERS <= 0:
            return 1.0
        alpha = jnp.minimum(step / s.WARMUP_ITERS, 1.0)
        if s.WARMUP_METHOD == "linear":
            factor = s.WARMUP_FACTOR * (1 - alpha) + alpha
        elif s.WARMUP_METHOD == "constant":
            factor = jnp.where(alpha < 1.0, s.WARMUP_FACTOR, 1.0)
        else:
            raise UserError(f"SOLVER.WARMUP_METHOD {s.WARMUP_METHOD!r} is not supported (linear, constant)")
        return jnp.where(step < s.WARMUP_ITERS, factor, 1.0)

    main(jnp.int32(0)), warmup(jnp.int32(0))  # surface config errors now, not inside jit
    return lambda step: main(step) * warmup(step)


def _label_tree(params: dict, fn: Callable[[tuple[str, ...]], Any]) -> dict:
    return unflatten_dict({p: fn(p) for p in flatten_dict(params)})


def is_norm_param(path: tuple[str, ...]) -> bool:
    return "norm" in path[:-1]


def stop_frozen_gradients(params: dict, frozen: dict | None) -> dict:
    """params with the frozen ones (a bool tree like params, from the model's is_frozen) behind stop_gradient:
    autodiff then skips their backward pass (weight gradients and the input gradients below the first
    trainable stage) instead of computing gradients the optimizer throws away."""
    if frozen is None:
        return params
    return jax.tree.map(lambda v, f: jax.lax.stop_gradient(v) if f else v, params, frozen)


def clip_per_leaf_norm(max_norm: float) -> optax.GradientTransformation:
    """Clip each parameter's gradient to L2 norm <= max_norm (torch clip_grad_norm_ per parameter)."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            n = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / (n + 1e-6))

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(cfg, params: dict, frozen: dict | None = None) -> optax.GradientTransformation:
    """optax chain equivalent to detectron2's SGD with its parameter groups; `frozen` (a bool tree like
    params) marks the parameters that never move (FREEZE_AT, as the model declares it)."""
    s = cfg.SOLVER
    chain = []
    if s.CLIP_GRADIENTS.ENABLED:
        kind = s.CLIP_GRADIENTS.CLIP_TYPE
        if kind == "value":
            chain.append(optax.clip(s.CLIP_GRADIENTS.CLIP_VALUE))
        elif kind == "norm":
            chain.append(clip_per_leaf_norm(s.CLIP_GRADIENTS.CLIP_VALUE))
        elif kind == "full_model":
            chain.append(optax.clip_by_global_norm(s.CLIP_GRADIENTS.CLIP_VALUE))
        else:
            raise UserError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {kind!r} is not one of value, norm, full_model")
    wd_bias = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS

    def decay(path):
        if path[-1] == "bias" and (s.WEIGHT_DECAY_BIAS is not None or s.BIAS_LR_FACTOR != 1.0):
            return wd_bias
        return s.WEIGHT_DECAY_NORM if is_norm_param(path) else s.WEIGHT_DECAY

    decays = _label_tree(params, decay)
    for value in sorted(set(jax.tree.leaves(decays))):
        if value:
            chain.append(optax.add_decayed_weights(value, mask=jax.tree.map(lambda d, v=value: d == v, decays)))
    chain.append(optax.sgd(lr_schedule(cfg), momentum=s.MOMENTUM or None, nesterov=s.NESTEROV))
    if s.BIAS_LR_FACTOR != 1.0:
        chain.append(optax.masked(optax.scale(s.BIAS_LR_FACTOR), _label_tree(params, lambda p: p[-1] == "bias")))
    if frozen is not None and any(jax.tree.leaves(frozen)):
        chain.append(optax.masked(optax.set_to_zero(), frozen))
    return optax.chain(*chain)

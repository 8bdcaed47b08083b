"""Predictor compile counts: one stage-1 program per padded input size, or per TEST.BUCKETS entry used.

The counts come from jax's compile events (Predictor.compile_counts), so a recompile that the padded size does
not explain (a dtype, a weak type, a Python scalar changing between calls) shows up as an extra program.
"""

import os

import jax
import numpy as np

from jaxseg.checkpoint.loading import abstract_variables
from jaxseg.config import setup_cfg
from jaxseg.engine.predictor import Predictor, canvas_size
from jaxseg.models.registry import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")
# (H, W) originals; the quickstart resizes to short side 128, long side at most 128
SIZES = [(60, 120), (30, 61), (90, 120), (120, 60), (60, 120)]
BUCKETS = ((64, 128), (128, 128))


def random_variables(model, seed: int = 0) -> dict:
    """Seeded random variables of the model's shapes without compiling model.init (norm scales 1, biases 0)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return np.zeros(leaf.shape, leaf.dtype)
        return rng.normal(0.0, 0.05, leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(model))


def _run(opts: list[str]) -> Predictor:
    cfg = setup_cfg(QUICKSTART, opts)
    predictor = Predictor(cfg, random_variables(build_model(cfg)))
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        predictor(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return predictor


def _expected(predictor: Predictor) -> tuple[set, set]:
    """Padded input sizes and mask canvases the input spec gives SIZES, worked out without the predictor."""
    spec = predictor.input_spec
    padded = {spec.padded_size(*spec.test_size(h, w)) for h, w in SIZES}
    return padded, {canvas_size(h, w) for h, w in SIZES}


def test_one_forward_program_per_padded_size():
    predictor = _run([])
    padded, canvases = _expected(predictor)
    assert padded == {(64, 128), (96, 128), (128, 64)}  # five images, three padded sizes
    assert predictor.sizes_seen()["forward"] == padded
    assert predictor.compile_counts() == {"forward": len(padded), "postprocess": len(canvases)}
    assert predictor.compile_seconds()["forward"] > 0


def test_buckets_bound_forward_programs():
    predictor = _run(["TEST.BUCKETS", repr(BUCKETS)])
    padded, canvases = _expected(predictor)
    assert padded == set(BUCKETS)  # every resized image fits one of the two buckets
    assert predictor.sizes_seen()["forward"] == padded
    assert predictor.compile_counts() == {"forward": len(BUCKETS), "postprocess": len(canvases)}

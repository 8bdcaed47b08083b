"""Predictor: detectron2's DefaultPredictor in JAX. One jitted function per (input, canvas) size bucket.

Host: read/resize the image exactly as detectron2 (Pillow, uint8), pad to the backbone's size divisibility.
Device (one jit): normalize -> backbone -> RPN -> ROI heads -> postprocess -> mask paste.
Host again: drop padding rows and crop the mask canvas to the image.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np

from jaxseg.data.transforms import resize_image, resize_shortest_edge_shape
from jaxseg.errors import UserError
from jaxseg.structures import Instances

SIZE_DIVISIBILITY = 32  # stride of res5; detectron2 pads FPN inputs to it
CANVAS_DIVISIBILITY = 32  # mask canvases are rounded up to it, so similar images share a compile


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache ($JAXSEG_CACHE_DIR, default ~/.cache/jaxseg/xla)."""
    path = path or os.environ.get("JAXSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxseg",
                                                                      "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def _round_up(x: int, d: int) -> int:
    return int(math.ceil(x / d) * d)


class Predictor:
    """`Predictor(cfg, weights)(image) -> Instances` on the original image (boxes, scores, classes, masks).

    `image` is an (H, W, 3) uint8 array in cfg.INPUT.FORMAT channel order (BGR for detectron2 configs), as
    DefaultPredictor takes; `Predictor.from_path` reads a file like detectron2's read_image does.
    """

    def __init__(self, cfg, weights: str | dict[str, Any] | None = None):
        from jaxseg.checkpoint.loading import load_weights
        from jaxseg.models.registry import build_model

        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.model = build_model(self.cfg)
        if isinstance(weights, dict):
            self.variables = weights
        else:
            self.variables = load_weights(self.cfg, weights, model=self.model)
        self.variables = jax.device_put(self.variables)
        self.input_format = self.cfg.INPUT.FORMAT
        self.min_size, self.max_size = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        enable_compilation_cache()
        self._forward = jax.jit(self.model.apply, static_argnames=("canvas_hw",))

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(H, W, 3) uint8 -> (1, Hp, Wp, 3) uint8 resized and zero-padded, and the resized (h, w)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UserError(f"Predictor expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        if self.min_size:
            nh, nw = resize_shortest_edge_shape(h, w, self.min_size, self.max_size)
            image = resize_image(image, (nh, nw))
        nh, nw = image.shape[:2]
        padded = np.zeros((1, _round_up(nh, SIZE_DIVISIBILITY), _round_up(nw, SIZE_DIVISIBILITY), 3), np.uint8)
        padded[0, :nh, :nw] = image
        return padded, (nh, nw)

    def __call__(self, image: np.ndarray) -> Instances:
        h, w = np.asarray(image).shape[:2]
        padded, resized_hw = self.preprocess(image)
        return self.forward(padded, resized_hw, (h, w))

    def forward(self, padded: np.ndarray, resized_hw: tuple[int, int], output_hw: tuple[int, int]) -> Instances:
        """Run on an already resized and padded (1, Hp, Wp, 3) image; results at output_hw (the original size)."""
        h, w = int(output_hw[0]), int(output_hw[1])
        canvas = (_round_up(h, CANVAS_DIVISIBILITY), _round_up(w, CANVAS_DIVISIBILITY))
        out = self._forward(self.variables, padded, np.array([resized_hw], np.int32), np.array([[h, w]], np.int32),
                            canvas_hw=canvas)
        out = jax.device_get(out)
        valid = out["valid"][0]
        masks = out["masks"][0][valid][:, :h, :w] if "masks" in out else None
        return Instances(boxes=out["boxes"][0][valid], scores=out["scores"][0][valid],
                         classes=out["classes"][0][valid], valid=np.ones(int(valid.sum()), bool), masks=masks)

    def from_path(self, path: str) -> Instances:
        from jaxseg.data.image_io import read_image

        return self(read_image(path, format=self.input_format))

"""Predictor: detectron2's DefaultPredictor in JAX, as the model interface's two jitted stages.

Host: read/resize the image exactly as detectron2 (Pillow, uint8), pad it as model.input_spec says (size
divisibility, or the smallest TEST.BUCKETS entry that holds it).
Device, stage 1 (one program per padded input size): `model.apply`, e.g. normalize -> backbone -> RPN -> ROI
heads for Mask R-CNN. Device, stage 2 (one program per mask canvas size): `model.postprocess`, boxes to the
original image, masks pasted.
Host again: drop padding rows and crop the mask canvas to the image.

`Predictor.compile_counts()` counts the XLA programs each stage really built (compiled, or loaded from the
persistent compilation cache), from jax's compile events.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxseg.data.input_spec import round_up
from jaxseg.errors import UserError
from jaxseg.structures import Instances

CANVAS_DIVISIBILITY = 32  # mask canvases are rounded up to it, so similar images share a compile
STAGES = ("forward", "postprocess")
# the names the stages are jitted under: jax's compile events name the function they compile
STAGE_FUNCTION_NAMES = {"forward": "jaxseg_predictor_forward", "postprocess": "jaxseg_predictor_postprocess"}
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT

# (predictor, stage) while a stage runs on this thread, so compile events reach the predictor that caused them
_ACTIVE_STAGE: contextvars.ContextVar[tuple[Predictor, str] | None] = contextvars.ContextVar(
    "jaxseg_active_stage", default=None)
_LISTENER_LOCK = threading.Lock()
_LISTENER_ON = False


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache ($JAXSEG_CACHE_DIR, default ~/.cache/jaxseg/xla)."""
    path = path or os.environ.get("JAXSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxseg",
                                                                      "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def canvas_size(h: int, w: int) -> tuple[int, int]:
    """The mask canvas of an (h, w) output: each side rounded up to CANVAS_DIVISIBILITY."""
    return round_up(h, CANVAS_DIVISIBILITY), round_up(w, CANVAS_DIVISIBILITY)


def _on_compile_event(event: str, duration: float, **kwargs: Any) -> None:
    """jax monitoring listener: a backend compile of a predictor stage's own function, while that stage runs."""
    if event != BACKEND_COMPILE_EVENT:
        return
    active = _ACTIVE_STAGE.get()
    if active is None:
        return
    predictor, stage = active
    if STAGE_FUNCTION_NAMES[stage] in str(kwargs.get("fun_name", "")):
        predictor._compile_seconds[stage].append(float(duration))


def _listen_to_compiles() -> None:
    """Register the compile listener once per process (jax keeps listeners for the process's life)."""
    global _LISTENER_ON
    with _LISTENER_LOCK:
        if not _LISTENER_ON:
            jax.monitoring.register_event_duration_secs_listener(_on_compile_event)
            _LISTENER_ON = True


def _stage_functions(model) -> tuple[Any, Any]:
    """The model's two inference stages as plain functions named STAGE_FUNCTION_NAMES (for the compile events)."""

    def jaxseg_predictor_forward(variables, images, image_hw):
        return model.apply(variables, images, image_hw)

    def jaxseg_predictor_postprocess(outputs, image_hw, output_hw, canvas_hw):
        return model.postprocess(outputs, image_hw, output_hw, canvas_hw)

    return jaxseg_predictor_forward, jaxseg_predictor_postprocess


class Predictor:
    """`Predictor(cfg, weights)(image) -> Instances` on the original image (boxes, scores, classes, masks).

    `image` is an (H, W, 3) uint8 array in the model's channel order (`model.input_spec.format`: BGR for
    detectron2 configs), as DefaultPredictor takes; `Predictor.from_path` reads a file like detectron2's
    read_image does.
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
        self.input_spec = self.model.input_spec
        self.input_format = self.input_spec.format
        enable_compilation_cache()
        _listen_to_compiles()
        # stage 1 compiles once per padded input size, stage 2 once per mask canvas size
        forward, postprocess = _stage_functions(self.model)
        self._forward = jax.jit(forward)
        self._postprocess = jax.jit(postprocess, static_argnames=("canvas_hw",))
        self._shapes: dict[str, set] = {stage: set() for stage in STAGES}
        self._compile_seconds: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(H, W, C) uint8 -> (1, Hp, Wp, C) uint8 resized and zero-padded as model.input_spec says, and the
        resized (h, w)."""
        image = np.asarray(image)
        channels = len(self.input_spec.pixel_mean)
        if image.ndim != 3 or image.shape[2] != channels or image.dtype != np.uint8:
            raise UserError(f"Predictor expects an (H, W, {channels}) uint8 image, got {image.shape} {image.dtype}")
        return self.input_spec.prepare_test_image(image)

    def __call__(self, image: np.ndarray) -> Instances:
        h, w = np.asarray(image).shape[:2]
        padded, resized_hw = self.preprocess(image)
        return self.forward(padded, resized_hw, (h, w))

    def forward(self, padded: np.ndarray, resized_hw: tuple[int, int], output_hw: tuple[int, int]) -> Instances:
        """Run on an already resized and padded (1, Hp, Wp, 3) image; results at output_hw (the original size)."""
        h, w = int(output_hw[0]), int(output_hw[1])
        image_hw = np.array([resized_hw], np.int32)
        canvas = canvas_size(h, w)
        self._shapes["forward"].add(tuple(padded.shape[1:3]))
        self._shapes["postprocess"].add(canvas)
        with self._stage("forward"):
            outputs = self._forward(self.variables, padded, image_hw)
        with self._stage("postprocess"):
            out = self._postprocess(outputs, image_hw, np.array([[h, w]], np.int32), canvas_hw=canvas)
        out = jax.device_get(out)
        valid = out["valid"][0]
        masks = out["masks"][0][valid][:, :h, :w] if "masks" in out else None
        return Instances(boxes=out["boxes"][0][valid], scores=out["scores"][0][valid],
                         classes=out["classes"][0][valid], valid=np.ones(int(valid.sum()), bool), masks=masks)

    @contextlib.contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        """Attribute the compile events of this thread to `stage` of this predictor while the block runs."""
        token = _ACTIVE_STAGE.set((self, stage))
        try:
            yield
        finally:
            _ACTIVE_STAGE.reset(token)

    def compile_counts(self) -> dict[str, int]:
        """XLA programs each stage has built so far (compiled, or loaded from the persistent cache): one per
        distinct padded input size ("forward") and per mask canvas size ("postprocess") when all is well."""
        return {stage: len(seconds) for stage, seconds in self._compile_seconds.items()}

    def compile_seconds(self) -> dict[str, float]:
        """Seconds each stage has spent in XLA's backend compile (or persistent-cache load), in total."""
        return {stage: float(sum(seconds)) for stage, seconds in self._compile_seconds.items()}

    def sizes_seen(self) -> dict[str, set[tuple[int, int]]]:
        """The distinct (H, W) each stage has run on: padded input sizes and mask canvas sizes."""
        return {stage: set(shapes) for stage, shapes in self._shapes.items()}

    def from_path(self, path: str) -> Instances:
        from jaxseg.data.image_io import read_image

        return self(read_image(path, format=self.input_format))

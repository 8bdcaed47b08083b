"""InputSpec: how a model wants its pictures, the one place every image path reads it from.

The predictor, the test loader and the training loader all prepare images through an `InputSpec`
that the model declares (`model.input_spec`), so a family with another resize rule or channel order
changes one value, not three copies of the code:

* channel order (`format`, "BGR" for detectron2 / AdelaiDet configs, "RGB" for Matterport);
* normalisation on device: `(x * scale - pixel_mean) / pixel_std` (`scale` 1/255 for families that
  work on [0, 1] pixels), zero outside the image as detectron2 pads after normalising;
* the resize rule: "shortest_edge" (detectron2's ResizeShortestEdge: test size, train sizes and
  sampling) or "fixed" (every image resized to `fixed_hw`, as real-time configs do);
* padding: to a multiple of `size_divisibility`, or to the smallest of a fixed set of `buckets`
  (jaxseg's TEST.BUCKETS: fewer compiles for more padding).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxseg.data.transforms import ResizeShortestEdge, resize_image, resize_shortest_edge_shape
from jaxseg.errors import UserError

RESIZE_RULES = ("shortest_edge", "fixed")


def round_up(x: int, d: int) -> int:
    """The smallest multiple of d that is >= x (x itself when d <= 1)."""
    return int(math.ceil(x / d) * d) if d > 1 else int(x)


@dataclass(frozen=True)
class InputSpec:
    """A model's input contract. Sizes are (height, width)."""

    format: str = "BGR"
    pixel_mean: tuple[float, ...] = (103.530, 116.280, 123.675)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    resize: str = "shortest_edge"
    min_size_test: int = 800
    max_size_test: int = 1333
    min_size_train: tuple[int, ...] = (800,)
    max_size_train: int = 1333
    min_size_train_sampling: str = "choice"
    fixed_hw: tuple[int, int] | None = None
    size_divisibility: int = 32
    buckets: tuple[tuple[int, int], ...] = ()
    hflip_train: bool | None = None  # AdelaiDet families: INPUT.HFLIP_TRAIN decides the training flip

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise UserError(f"input resize rule {self.resize!r} is not one of {', '.join(RESIZE_RULES)}")
        if self.resize == "fixed" and not self.fixed_hw:
            raise UserError("input resize rule 'fixed' needs fixed_hw (height, width)")
        if self.format not in ("BGR", "RGB"):
            raise UserError(f"INPUT.FORMAT {self.format!r} is not supported (BGR, RGB)")
        if len(self.pixel_mean) != len(self.pixel_std):
            raise UserError(f"MODEL.PIXEL_MEAN {self.pixel_mean} and MODEL.PIXEL_STD {self.pixel_std} differ in "
                            "length")
        for hw in self.buckets:
            if len(hw) != 2 or any(int(v) <= 0 or int(v) % max(self.size_divisibility, 1) for v in hw):
                raise UserError(f"TEST.BUCKETS entry {tuple(hw)} must be (height, width), positive multiples of "
                                f"the size divisibility {self.size_divisibility}")

    @classmethod
    def from_config(cls, cfg, size_divisibility: int, **overrides) -> InputSpec:
        """detectron2's INPUT.* and MODEL.PIXEL_* (plus jaxseg's TEST.BUCKETS) for a model whose backbone
        needs inputs divisible by `size_divisibility`."""
        min_train = cfg.INPUT.MIN_SIZE_TRAIN
        values = dict(
            format=cfg.INPUT.FORMAT, pixel_mean=tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
            pixel_std=tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
            min_size_test=int(cfg.INPUT.MIN_SIZE_TEST), max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
            min_size_train=(int(min_train),) if isinstance(min_train, int) else tuple(int(v) for v in min_train),
            max_size_train=int(cfg.INPUT.MAX_SIZE_TRAIN),
            min_size_train_sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, size_divisibility=int(size_divisibility),
            buckets=tuple(tuple(int(v) for v in hw) for hw in cfg.TEST.get("BUCKETS", ())),
        )
        values.update(overrides)
        return cls(**values)

    # -- sizes -------------------------------------------------------------------------------------

    def test_size(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) an (h, w) picture is resized to at test time."""
        if self.resize == "fixed":
            return int(self.fixed_hw[0]), int(self.fixed_hw[1])
        if not self.min_size_test:
            return int(h), int(w)
        return resize_shortest_edge_shape(h, w, self.min_size_test, self.max_size_test or sys.maxsize)

    def train_resize(self) -> ResizeShortestEdge:
        """The training-time resize augmentation (multi-scale for several MIN_SIZE_TRAIN values)."""
        if self.resize == "fixed":
            raise UserError("training with the 'fixed' resize rule is not supported by jaxseg's loader yet")
        if self.min_size_train_sampling not in ("choice", "range"):
            raise UserError("INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got "
                            f"{self.min_size_train_sampling!r}")
        return ResizeShortestEdge(self.min_size_train, self.max_size_train, self.min_size_train_sampling)

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The padded (Hp, Wp) of an (h, w) resized image: the smallest bucket that holds it (by area), else
        each side rounded up to the size divisibility."""
        fits = [b for b in self.buckets if b[0] >= h and b[1] >= w]
        if fits:
            return min(fits, key=lambda b: (b[0] * b[1], b))
        return round_up(h, self.size_divisibility), round_up(w, self.size_divisibility)

    # -- pictures ----------------------------------------------------------------------------------

    def prepare_test_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(H, W, C) uint8 in `format` order -> ((1, Hp, Wp, C) uint8 resized and zero-padded, resized (h, w))."""
        image = np.asarray(image)
        h, w = image.shape[:2]
        nh, nw = self.test_size(h, w)
        if (nh, nw) != (h, w):
            image = resize_image(image, (nh, nw))
        return self.pad(image[None], [(nh, nw)], self.padded_size(nh, nw)), (nh, nw)

    @staticmethod
    def pad(images: Sequence[np.ndarray] | np.ndarray, sizes: Sequence[tuple[int, int]],
            padded_hw: tuple[int, int]) -> np.ndarray:
        """Images of the given (h, w) into one (N, Hp, Wp, C) uint8 array, zero right and below."""
        channels = images[0].shape[-1]
        out = np.zeros((len(sizes), int(padded_hw[0]), int(padded_hw[1]), channels), np.uint8)
        for i, (img, (h, w)) in enumerate(zip(images, sizes)):
            out[i, :h, :w] = img[:h, :w]
        return out

    def normalize(self, images, image_hw):
        """On device: (N, Hp, Wp, C) padded pictures (any dtype) -> normalised float32, zero outside each
        image's (h, w) (detectron2 pads after normalising)."""
        import jax.numpy as jnp

        x = images.astype(jnp.float32)
        if self.scale != 1.0:
            x = x * jnp.float32(self.scale)
        x = (x - jnp.asarray(self.pixel_mean, jnp.float32)) / jnp.asarray(self.pixel_std, jnp.float32)
        rows = jnp.arange(x.shape[1])[None, :, None] < image_hw[:, 0, None, None]
        cols = jnp.arange(x.shape[2])[None, None, :] < image_hw[:, 1, None, None]
        return jnp.where((rows & cols)[..., None], x, 0.0)

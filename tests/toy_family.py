"""A model family defined outside the package, as a detectron2 user's own project would add one.

`ToyBoxNet` is a tiny dense box detector (one prediction per cell of a stride-8 grid, FCOS-like, with class-wise
NMS), small enough to train a few hundred steps on CPU in seconds:

* its own config keys, ``MODEL.TOY.*``, added with `jaxseg.config.add_config`;
* its own `InputSpec` (RGB channel order, pixels scaled to [0, 1] and normalised with ImageNet's mean and
  std, size divisibility 16, shortest edge ``MODEL.TOY.MIN_SIZE``) and `TargetSpec` (boxes only);
* registered in `META_ARCH_REGISTRY`, so ``MODEL.META_ARCHITECTURE ToyBoxNet`` builds it;
* its own checkpoint adapter (``"toy_boxnet"``: dotted tensor names <-> ``params`` paths). Its training
  checkpoints are orbax directories, which MODEL.WEIGHTS reads without any adapter.

Importing this module registers everything (once per process, as a user's train_net.py would).
`TRACED_BATCHES` receives, each time `losses` is traced, the keys, shapes and dtypes of the batch it got.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.checkpoint.adapters import CheckpointAdapter, register_adapter
from jaxseg.config import CfgNode, add_config
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.kernels.nms import batched_nms
from jaxseg.models.meta_arch import MetaArch, kernels_from_config, precision_from_config
from jaxseg.models.registry import META_ARCH_REGISTRY

STRIDE = 8  # three stride-2 convolutions
SIZE_DIVISIBILITY = 16  # a multiple of STRIDE; not 32, so a test can tell this spec from R-CNN's
TOY_MEAN = (0.485, 0.456, 0.406)  # RGB, on [0, 1] pixels
TOY_STD = (0.229, 0.224, 0.225)
CENTER_RADIUS = 1.0  # positives: cells whose centre is within this many strides of a GT box's centre
MAX_LOG_SIZE = 6.0  # clamp of the predicted log sizes (exp(6) * 8 px is far beyond any image here)

TRACED_BATCHES: list[dict[str, tuple[tuple[int, ...], str]]] = []


@add_config
def add_toy_config(cfg: CfgNode) -> None:
    """MODEL.TOY.*: the toy family's keys and defaults."""
    cfg.MODEL.TOY = CfgNode({
        "HIDDEN": 32,  # channels of every convolution
        "NUM_CLASSES": 6,  # foreground classes (the family's own key, as RETINANET.NUM_CLASSES is)
        "MIN_SIZE": 80,  # shortest edge, at training and test time
        "MAX_SIZE": 160,  # longest edge
        "DETECTIONS_PER_IMAGE": 20,  # D
        "SCORE_THRESH": 0.05,
        "NMS_THRESH": 0.5,
    })


def _to_path(name: str) -> tuple[str, ...]:
    return ("params", *name.split("."))


def _to_name(path: tuple[str, ...]) -> str:
    return ".".join(path[1:])


TOY_ADAPTER = register_adapter(CheckpointAdapter("toy_boxnet", to_path=_to_path, to_name=_to_name))


def cell_centers(hf: int, wf: int) -> jax.Array:
    """(hf * wf, 2) xy centres of the grid cells in input pixels, row-major."""
    ys, xs = jnp.meshgrid(jnp.arange(hf), jnp.arange(wf), indexing="ij")
    return (jnp.stack([xs, ys], -1).reshape(-1, 2).astype(jnp.float32) + 0.5) * STRIDE


def assign(centers: jax.Array, boxes: jax.Array, classes: jax.Array, valid: jax.Array,
           inside: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ONE image: each cell's class (0 background, else class + 1) and its GT box. A cell is positive for a valid
    GT box whose centre region (CENTER_RADIUS strides around the box centre, inside the box) holds the cell's
    centre; the smallest such box wins. Cells outside the image (`inside` False) are background."""
    x, y = centers[:, 0:1], centers[:, 1:2]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = CENTER_RADIUS * STRIDE
    x0, x1 = jnp.maximum(boxes[:, 0], cx - r), jnp.minimum(boxes[:, 2], cx + r)
    y0, y1 = jnp.maximum(boxes[:, 1], cy - r), jnp.minimum(boxes[:, 3], cy + r)
    holds = (x > x0[None]) & (x < x1[None]) & (y > y0[None]) & (y < y1[None])
    holds &= valid[None, :] & inside[:, None]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = jnp.argmin(jnp.where(holds, area[None, :], jnp.inf), axis=1)
    positive = holds.any(axis=1)
    return jnp.where(positive, classes[best] + 1, 0), boxes[best]


def encode(centers: jax.Array, boxes: jax.Array) -> jax.Array:
    """XYXY boxes (..., M, 4) relative to the cell centres (M, 2): centre offset and log size, in strides."""
    wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 1.0)
    offset = ((boxes[..., :2] + boxes[..., 2:]) / 2 - centers) / STRIDE
    return jnp.concatenate([offset, jnp.log(wh / STRIDE)], axis=-1)


def decode(centers: jax.Array, deltas: jax.Array) -> jax.Array:
    """The inverse of `encode`: (..., M, 4) deltas -> XYXY boxes in input pixels."""
    center = centers + deltas[..., :2] * STRIDE
    half = jnp.exp(jnp.clip(deltas[..., 2:], -MAX_LOG_SIZE, MAX_LOG_SIZE)) * STRIDE / 2
    return jnp.concatenate([center - half, center + half], axis=-1)


@META_ARCH_REGISTRY.register()
class ToyBoxNet(nn.Module, MetaArch):
    """images -> three stride-2 convs, two dilated convs -> per stride-8 cell: class logits (background first)
    and box deltas (`encode`)."""

    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int
    hidden: int = 32
    detections_per_image: int = 20
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    kernels: str | None = None
    precision: str = "highest"

    checkpoint_adapter: ClassVar[str] = TOY_ADAPTER.name

    @classmethod
    def from_config(cls, cfg) -> ToyBoxNet:
        """MODEL.TOY.* (and FLOAT32_PRECISION, MODEL.KERNELS) -> the module; nothing below reads the config."""
        toy = cfg.MODEL.TOY
        if toy.HIDDEN < 1 or toy.NUM_CLASSES < 1:
            raise ValueError(f"MODEL.TOY.HIDDEN and NUM_CLASSES must be positive, got {toy.HIDDEN}, "
                             f"{toy.NUM_CLASSES}")
        spec = InputSpec(format="RGB", scale=1 / 255, pixel_mean=TOY_MEAN, pixel_std=TOY_STD,
                         min_size_test=int(toy.MIN_SIZE), max_size_test=int(toy.MAX_SIZE),
                         min_size_train=(int(toy.MIN_SIZE),), max_size_train=int(toy.MAX_SIZE),
                         size_divisibility=SIZE_DIVISIBILITY)
        return cls(input_spec=spec, target_spec=TargetSpec(), num_classes=int(toy.NUM_CLASSES),
                   hidden=int(toy.HIDDEN), detections_per_image=int(toy.DETECTIONS_PER_IMAGE),
                   score_thresh=float(toy.SCORE_THRESH), nms_thresh=float(toy.NMS_THRESH),
                   kernels=kernels_from_config(cfg), precision=precision_from_config(cfg))

    def setup(self) -> None:
        self.body = [nn.Conv(self.hidden, (3, 3), strides=(2, 2), name=f"conv{i}") for i in range(3)]
        self.tower = [nn.Conv(self.hidden, (3, 3), kernel_dilation=(2, 2), name=f"tower{i}") for i in range(2)]
        self.cls_logits = nn.Conv(self.num_classes + 1, (1, 1), name="cls_logits")
        self.box_deltas = nn.Conv(4, (1, 1), name="box_deltas")

    def head(self, images: jax.Array, image_hw: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(N, Hp, Wp, 3) padded pictures -> logits (N, M, C + 1), box deltas (N, M, 4), cell centres (M, 2)."""
        with jax.default_matmul_precision(self.precision):
            x = self.input_spec.normalize(images, image_hw)
            for conv in self.body:
                x = nn.relu(conv(x))
            for conv in self.tower:
                x = nn.relu(conv(x))
            n, hf, wf, _ = x.shape
            logits = self.cls_logits(x).reshape(n, hf * wf, -1)
            deltas = self.box_deltas(x).reshape(n, hf * wf, 4)
        return logits, deltas, cell_centers(hf, wf)

    def __call__(self, images: jax.Array, image_hw: jax.Array) -> dict[str, jax.Array]:
        """Stage 1: the D best cells after class-wise NMS, boxes in resized-image pixels."""
        logits, deltas, centers = self.head(images, image_hw)
        probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
        scores, classes = probs.max(-1), probs.argmax(-1).astype(jnp.int32)
        boxes = decode(centers, deltas)
        inside = (centers[None, :, 0] < image_hw[:, 1:2]) & (centers[None, :, 1] < image_hw[:, 0:1])
        candidates = inside & (scores > self.score_thresh)
        d = min(self.detections_per_image, centers.shape[0])

        def one(b, s, c, v):
            keep, kept = batched_nms(b, s, c, self.nms_thresh, valid=v, max_output=d, implementation=self.kernels)
            return b[keep], s[keep], c[keep], kept

        boxes, scores, classes, valid = jax.vmap(one)(boxes, scores, classes, candidates)
        return {"boxes": boxes, "scores": jnp.where(valid, scores, 0.0), "classes": classes, "valid": valid}

    @nn.nowrap
    def postprocess(self, outputs: dict[str, jax.Array], image_hw: jax.Array, output_hw: jax.Array,
                    canvas_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """Stage 2: boxes scaled to the original sizes output_hw and clipped to them; no masks."""
        del canvas_hw  # a box-only family draws nothing on the canvas
        scale = (output_hw.astype(jnp.float32) / image_hw.astype(jnp.float32))[:, None, ::-1]  # (N, 1, 2) xy
        boxes = outputs["boxes"] * jnp.tile(scale, (1, 1, 2))
        limit = jnp.tile(output_hw[:, None, ::-1].astype(jnp.float32), (1, 1, 2))
        boxes = jnp.clip(boxes, 0.0, limit)
        nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        return {"boxes": boxes, "scores": outputs["scores"], "classes": outputs["classes"],
                "valid": outputs["valid"] & nonempty}

    def losses(self, key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Softmax cross-entropy over the cells inside each image, L1 on the box deltas of the positive cells.
        Records the keys, shapes and dtypes of the batch it is traced with in TRACED_BATCHES."""
        del key  # nothing random
        TRACED_BATCHES.append({k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()})
        logits, deltas, centers = self.head(batch["images"], batch["image_hw"])
        hw = batch["image_hw"]
        inside = (centers[None, :, 0] < hw[:, 1:2]) & (centers[None, :, 1] < hw[:, 0:1])
        labels, gt = jax.vmap(assign, in_axes=(None, 0, 0, 0, 0))(
            centers, batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"], inside)
        weights = inside.astype(jnp.float32)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[..., None], axis=-1)[..., 0]
        loss_cls = jnp.sum(ce * weights) / jnp.maximum(weights.sum(), 1.0)
        target = encode(centers, gt)
        positive = (labels > 0).astype(jnp.float32)
        l1 = jnp.abs(deltas - jax.lax.stop_gradient(target)).sum(-1)
        loss_box = jnp.sum(l1 * positive) / jnp.maximum(positive.sum(), 1.0)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}

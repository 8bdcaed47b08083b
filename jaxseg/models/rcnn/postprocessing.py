"""detector_postprocess: from resized-image detections to the original image, masks pasted."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.kernels import paste_masks
from jaxseg.models.ops import box_coder


def detector_postprocess(det: dict[str, jax.Array], resized_hw: jax.Array, output_hw: jax.Array,
                         canvas_hw: tuple[int, int], mask_threshold: float = 0.5,
                         kernels: str | None = None) -> dict[str, jax.Array]:
    """ONE image. Scales boxes by output/resized size, clips to the output size, drops empty boxes, and pastes
    the mask probabilities into a (canvas_h, canvas_w) >= output size canvas (the host crops it)."""
    resized_hw = resized_hw.astype(jnp.float32)
    out_f = output_hw.astype(jnp.float32)
    scale_y, scale_x = out_f[0] / resized_hw[0], out_f[1] / resized_hw[1]
    boxes = det["boxes"] * jnp.stack([scale_x, scale_y, scale_x, scale_y])
    boxes = box_coder.clip_boxes(boxes, output_hw)
    out = dict(det, boxes=boxes, valid=det["valid"] & box_coder.nonempty(boxes))
    if "mask_probs" in det:
        out["masks"] = paste_masks(det["mask_probs"], boxes, canvas_hw, threshold=mask_threshold,
                                   implementation=kernels)
    return out

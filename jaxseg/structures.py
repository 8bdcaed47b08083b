"""Fixed-size pytrees that flow out of the jitted functions.

Every per-instance array has a static leading size K (the padded maximum); `valid` says which rows
are real. Host code calls `Instances.numpy()` to drop the padding once, after the device is done.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class Instances:
    """Detections of one image (or a batch, with a leading image axis on every field).

    boxes: (K, 4) XYXY float32; scores: (K,); classes: (K,) int32 contiguous ids (0..C-1);
    valid: (K,) bool; masks: (K, H, W) bool pasted masks, (K, M, M) probabilities, or None.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    valid: jax.Array
    masks: Any = None

    def numpy(self) -> dict[str, np.ndarray]:
        """Host copy with the padding rows removed (single image only)."""
        valid = np.asarray(self.valid)
        if valid.ndim != 1:
            raise ValueError(f"Instances.numpy() wants one image, got valid of shape {valid.shape}")
        out = {
            "boxes": np.asarray(self.boxes)[valid],
            "scores": np.asarray(self.scores)[valid],
            "classes": np.asarray(self.classes)[valid],
        }
        if self.masks is not None:
            out["masks"] = np.asarray(self.masks)[valid]
        return out

    def __len__(self) -> int:
        return int(np.asarray(self.valid).sum())

"""TargetSpec: which ground truth a model trains on; the training loader builds exactly that.

Every family gets boxes and classes (padded to DATALOADER.MAX_GT_INSTANCES with `gt_valid`). On top:

=================  ======================================  ==========================================
field              batch key, shape                        who needs it
=================  ======================================  ==========================================
box_mask_size S    gt_masks (B, G, S, S) uint8              Mask R-CNN (mask targets cut per RoI)
bitmask_stride s   gt_bitmasks (B, G, Hp/s, Wp/s) uint8     BlendMask, EmbedMask, CenterMask, ...
semantic           gt_semantic (B, Hp, Wp) int32            panoptic heads (not built by jaxseg yet)
=================  ======================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

BOX_KEYS = ("gt_boxes", "gt_classes", "gt_valid")


@dataclass(frozen=True)
class TargetSpec:
    box_mask_size: int = 0  # 0: no box-aligned mask crops
    bitmask_stride: int = 0  # 0: no full-image bitmasks
    semantic: bool = False

    def keys(self) -> tuple[str, ...]:
        """The ground-truth keys of a training batch for this spec."""
        keys = BOX_KEYS
        if self.box_mask_size:
            keys += ("gt_masks",)
        if self.bitmask_stride:
            keys += ("gt_bitmasks",)
        if self.semantic:
            keys += ("gt_semantic",)
        return keys

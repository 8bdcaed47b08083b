"""TargetSpec: which ground truth a model trains on; the training loader builds exactly that.

Every family gets boxes and classes (padded to DATALOADER.MAX_GT_INSTANCES with `gt_valid`). On top:

=================  ==============================================  =========================================
field              batch keys, shapes                              who needs it
=================  ==============================================  =========================================
polygons           gt_polygon_xy (B, G, S, 2, 2) uint32,           Mask R-CNN, INPUT.MASK_FORMAT polygon
                   gt_polygon_id (B, G, S) int32,                  (rasterised inside each sampled RoI)
                   gt_polygon_start (B, G, P) int32
bitmask_stride s   gt_bitmasks (B, G, Hp/s, Wp/s) uint8             BlendMask, EmbedMask, CenterMask, ...;
                                                                   Mask R-CNN with MASK_FORMAT bitmask (s=1)
semantic           gt_semantic (B, Hp, Wp) int32                    panoptic heads (not built by jaxseg yet)
=================  ==============================================  =========================================

The polygon layout is `jaxseg.data.masks.pack_polygons`' (S vertex slots and P polygons per instance,
sized from the training set).
"""

from __future__ import annotations

from dataclasses import dataclass

BOX_KEYS = ("gt_boxes", "gt_classes", "gt_valid")
POLYGON_KEYS = ("gt_polygon_xy", "gt_polygon_id", "gt_polygon_start")


@dataclass(frozen=True)
class TargetSpec:
    polygons: bool = False  # the instances' polygons (float64, packed)
    bitmask_stride: int = 0  # 0: no full-image bitmasks
    semantic: bool = False
    thing_semantic_stride: int = 0  # 0: no thing-semantic map (BlendMask's basis loss)

    def keys(self) -> tuple[str, ...]:
        """The ground-truth keys of a training batch for this spec."""
        keys = BOX_KEYS
        if self.polygons:
            keys += POLYGON_KEYS
        if self.bitmask_stride:
            keys += ("gt_bitmasks",)
        if self.semantic:
            keys += ("gt_semantic",)
        return keys

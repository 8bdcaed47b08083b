"""TargetSpec: which ground truth a model trains on; the training loader builds exactly that.

Every family gets boxes and classes (padded to DATALOADER.MAX_GT_INSTANCES with `gt_valid`). On top:

=======================  ==============================================  ===================================
field                    batch keys, shapes                              who needs it
=======================  ==============================================  ===================================
polygons                 gt_polygon_xy (B, G, S, 2, 2) uint32,           Mask R-CNN, INPUT.MASK_FORMAT
                         gt_polygon_id (B, G, S) int32,                  polygon (rasterised inside each
                         gt_polygon_start (B, G, P) int32                sampled RoI); BlendMask
bitmask_stride s         gt_bitmasks (B, G, Hp/s, Wp/s) uint8            BlendMask, EmbedMask, CenterMask,
                                                                         ...; Mask R-CNN with MASK_FORMAT
                                                                         bitmask (s=1)
semantic                 gt_semantic (B, Hp, Wp) int32                   panoptic heads (not built yet)
thing_semantic_stride s  gt_thing_semantic (B, Hp/s, Wp/s) int32         BlendMask's basis loss
                         (0 background, contiguous class id + 1)         (BASIS_MODULE.LOSS_ON)
=======================  ==============================================  ===================================

The polygon layout is `jaxseg.data.masks.pack_polygons`' (S vertex slots and P polygons per instance,
sized from the training set). The thing-semantic map is `jaxseg.data.semantic`'s (all annotations of the
image, crowd ones too, painted at the original size, then resized, flipped, zero-padded and sampled at
pixel (s i, s j), AdelaiDet's ``prepare_thing_sem_from_instance.py`` map as its model reads it).
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
        if self.thing_semantic_stride:
            keys += ("gt_thing_semantic",)
        return keys

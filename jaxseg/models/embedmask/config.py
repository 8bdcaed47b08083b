"""EmbedMask's config keys. gakkiri/EmbedMask adds none (its embedding size is hard-coded to 64 and the proposal
rule is fixed); jaxseg exposes both under MODEL.EMBEDMASK with upstream's behaviour as the default."""

from __future__ import annotations

from jaxseg.config import CfgNode, add_config, register_unsupported


@add_config
def add_embedmask_config(cfg: CfgNode) -> None:
    cfg.MODEL.EMBEDMASK = CfgNode({
        "EMBED_DIM": 64,  # channels of the pixel and proposal embeddings
        # which locations a GT's mask proposal is chosen among (the best predicted-box IoU with the GT):
        # "matched": every location whose assigned GT index is this GT, as upstream computes it; background
        #   locations carry index 0, so GT 0 competes with the whole background;
        # "positive": the FCOS positives of this GT only (what upstream evidently intends).
        "PROPOSAL_FROM": "matched",
        "BOX_TO_MARGIN_SCALE": 800.0,  # margin input: the regression in pixels / this constant
        "MASK_LOSS_WEIGHT": 0.5,  # upstream's loss_mask_alpha
    })


register_unsupported("MODEL.EMBEDMASK.PROPOSAL_FROM", ["matched", "positive"])

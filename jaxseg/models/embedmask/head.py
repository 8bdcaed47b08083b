"""EmbedMaskHead: the FCOS head plus gakkiri/EmbedMask's embedding branches.

On top of FCOSHead: `proposal_embed` (conv3x3 -> EMBED_DIM) on each level's box tower, `margin` (conv1x1 4 -> 1)
on the regression converted to pixels / BOX_TO_MARGIN_SCALE, whose exp is the proposal's sigma, and the pixel
branch on p3 only: `pixel_embed_tower` (4 x [conv3x3, GroupNorm(32), ReLU], whatever NUM_*_CONVS say) then
`pixel_embed` (conv3x3 -> EMBED_DIM). Module names follow upstream's state dict
(`proposal_generator.fcos_head.pixel_embed_tower.0`, `.proposal_embed`, `.margin`).

The proposal embedding and the margin are needed only at a few locations (the detections at test time, one
proposal per GT in training), so `proposals_at` evaluates them there from a 3x3 box-tower patch; `embedding_maps`
gives them at every location (for checks against upstream, which computes them everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.fcos.fcos import patches_at
from jaxseg.models.fcos.head import FCOSHead
from jaxseg.models.layers import Conv2d, normal_init

PIXEL_TOWER_CONVS = 4  # fixed upstream


class EmbedMaskHead(FCOSHead):
    embed_dim: int = 64
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    box_to_margin_scale: float = 800.0

    def setup(self) -> None:
        super().setup()
        self.pixel_embed_tower = self._tower_layers("pixel_embed_tower", PIXEL_TOWER_CONVS)
        self.pixel_embed = Conv2d(self.embed_dim, 3, padding=1, kernel_init=normal_init(0.01))
        self.proposal_embed = Conv2d(self.embed_dim, 3, padding=1, kernel_init=normal_init(0.01))
        self.margin = Conv2d(1, 1, kernel_init=normal_init(0.01),
                             bias_init=nn.initializers.constant(math.log(math.log(2.0) / 4.0)))

    def __call__(self, features: Sequence[jax.Array]) -> dict[str, list[jax.Array]]:
        """FCOSHead's outputs plus pixel_embed (N, H3, W3, E) from the first level (p3)."""
        out = super().__call__(features)
        out["pixel_embed"] = self.pixel_embed(self.pixel_tower(features[0]))
        if self.is_initializing():  # create the parameters proposals_at reads
            self.embedding_maps(out)
        return out

    def pixel_tower(self, p3: jax.Array) -> jax.Array:
        """pixel_embed_tower(p3) (N, H3, W3, C)."""
        return self._run_tower(p3, self.pixel_embed_tower)

    def margin_of(self, reg: jax.Array, stride: jax.Array) -> jax.Array:
        """reg (..., 4) in stride units, stride broadcastable to (...) -> margin (...) = exp(conv1x1(reg * stride /
        BOX_TO_MARGIN_SCALE))."""
        p = self.margin.variables["params"]
        x = reg * (stride[..., None] / self.box_to_margin_scale)
        return jnp.exp(jnp.einsum("...c,c->...", x, p["kernel"][0, 0, :, 0],
                                  precision=jax.lax.Precision.HIGHEST) + p["bias"][0])

    def embedding_maps(self, out: dict[str, list[jax.Array]]) -> dict[str, list[jax.Array]]:
        """Per level proposal_embed (N, H, W, E) and margin (N, H, W) at every location."""
        embeds = [self.proposal_embed(t) for t in out["bbox_tower"]]
        margins = [jnp.exp(self.margin(r * (s / self.box_to_margin_scale))[..., 0])
                   for r, s in zip(out["reg"], self.strides)]
        return {"proposal_embed": embeds, "margin": margins}

    def proposals_at(self, out: dict[str, list[jax.Array]], level: jax.Array, location: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
        """level / location (N, D) (index y * W + x in the level) -> proposal embeddings (N, D, E) and margins
        (N, D), as embedding_maps gives them there."""
        patches = jax.vmap(patches_at)(out["bbox_tower"], level, location)  # (N, D, 3, 3, C)
        p = self.proposal_embed.variables["params"]
        embeds = jnp.einsum("ndijc,ijce->nde", patches, p["kernel"], precision=jax.lax.Precision.HIGHEST) + p["bias"]
        reg = jnp.zeros(level.shape + (4,), out["reg"][0].dtype)
        for lvl, r in enumerate(out["reg"]):
            flat = r.reshape(r.shape[0], -1, 4)
            here = jnp.take_along_axis(flat, jnp.clip(location, 0, flat.shape[1] - 1)[..., None], axis=1)
            reg = jnp.where((level == lvl)[..., None], here, reg)
        stride = jnp.asarray(self.strides, jnp.float32)[level]
        return embeds, self.margin_of(reg, stride)

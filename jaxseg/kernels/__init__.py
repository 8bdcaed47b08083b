"""Kernel ops. Each takes ``implementation=None|"xla"|"triton"|"ffi"`` (see ``_dispatch``)."""

from jaxseg.kernels import ffi  # noqa: F401  (registers the C++ "ffi" implementations)
from jaxseg.kernels import triton as _triton  # noqa: F401  (registers "triton"; imports no triton until used)
from jaxseg.kernels.nms import batched_nms, nms
from jaxseg.kernels.paste_masks import paste_masks
from jaxseg.kernels.roi_align import roi_align
from jaxseg.kernels.swap_align2nat import swap_align2nat, swap_align2nat_at

__all__ = ["batched_nms", "nms", "paste_masks", "roi_align", "swap_align2nat", "swap_align2nat_at"]

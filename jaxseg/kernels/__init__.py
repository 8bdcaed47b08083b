"""Kernel ops. Each takes ``implementation=None|"xla"|"triton"|"ffi"`` (see ``_dispatch``)."""

from jaxseg.kernels.nms import batched_nms, nms
from jaxseg.kernels.paste_masks import paste_masks
from jaxseg.kernels.roi_align import roi_align

__all__ = ["batched_nms", "nms", "paste_masks", "roi_align"]

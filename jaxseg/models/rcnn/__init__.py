"""detectron2's GeneralizedRCNN family (Mask R-CNN, Faster R-CNN): backbone, RPN, ROI heads."""

from jaxseg.models.backbones import fpn, resnet  # noqa: F401  (register the ResNet and ResNet+FPN backbones)
from jaxseg.models.rcnn import rcnn, roi_heads, rpn  # noqa: F401  (register the meta-arch and its parts)

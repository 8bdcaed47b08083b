"""COCO metadata: the 80 "thing" classes of COCO 2017 instances, ids, contiguous ids and colours.

detectron2 models predict a *contiguous* class index 0..79, which is the position of the category in
COCO's sorted category-id list (ids run 1..90 with ten unused ids). Evaluation and COCO json output
map back through :data:`COCO_THING_CONTIGUOUS_TO_DATASET_ID`.
"""

from __future__ import annotations

import colorsys

# (COCO category id, name, supercategory), in increasing id order, as in instances_val2017.json.
COCO_THING_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)


def distinct_colors(n: int, saturation: float = 0.7, value: float = 0.9) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (0..255): hues stepped by the golden ratio, a fixed sequence."""
    colors = []
    for i in range(n):
        hue = (i * 0.6180339887498949) % 1.0
        sat = saturation if i % 2 == 0 else saturation * 0.75  # alternate to separate close hues
        r, g, b = colorsys.hsv_to_rgb(hue, sat, value)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


COCO_THING_CLASSES: tuple[str, ...] = tuple(name for _, name, _ in COCO_THING_CATEGORIES)
COCO_THING_DATASET_IDS: tuple[int, ...] = tuple(cid for cid, _, _ in COCO_THING_CATEGORIES)
COCO_THING_SUPERCATEGORIES: tuple[str, ...] = tuple(sup for _, _, sup in COCO_THING_CATEGORIES)
COCO_THING_COLORS: tuple[tuple[int, int, int], ...] = tuple(distinct_colors(len(COCO_THING_CATEGORIES)))

COCO_THING_DATASET_ID_TO_CONTIGUOUS: dict[int, int] = {cid: i for i, cid in enumerate(COCO_THING_DATASET_IDS)}
COCO_THING_CONTIGUOUS_TO_DATASET_ID: dict[int, int] = {
    i: cid for cid, i in COCO_THING_DATASET_ID_TO_CONTIGUOUS.items()
}


def coco_instances_meta() -> dict:
    """Metadata for COCO instance segmentation, with detectron2's field names."""
    return {
        "thing_classes": list(COCO_THING_CLASSES),
        "thing_colors": [list(c) for c in COCO_THING_COLORS],
        "thing_dataset_id_to_contiguous_id": dict(COCO_THING_DATASET_ID_TO_CONTIGUOUS),
    }

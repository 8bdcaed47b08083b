"""Drawing predicted instances on an image, and writing PNGs atomically.

The look follows detectron2's Visualizer in spirit: each instance gets its own colour, its mask
is blended in at 50 % with a solid outline, and its box carries a "class 97%" label. Colours
depend only on the instance's position in the input, so the same prediction draws the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxseg.data.builtin_meta import distinct_colors

MASK_ALPHA = 0.5


def instance_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 colours for n instances, a fixed sequence."""
    return np.array(distinct_colors(n, saturation=0.75, value=1.0), dtype=np.uint8).reshape(n, 3)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean (H, W) mask that have a 4-neighbour outside it (or lie on the border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def _blend_masks(image: np.ndarray, masks: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Blend each mask's colour into ``image`` (float32), larger masks first so small ones stay visible."""
    out = image.astype(np.float32)
    order = np.argsort(-masks.reshape(len(masks), -1).sum(axis=1), kind="stable")
    for i in order:
        m = masks[i]
        out[m] = out[m] * (1.0 - MASK_ALPHA) + colors[i].astype(np.float32) * MASK_ALPHA
        out[mask_outline(m)] = colors[i]
    return out


def _label_text(class_id: int, score: float, class_names: Sequence[str] | None) -> str:
    """ "name 97%"; an unknown class shows its index."""
    if class_names is not None and 0 <= class_id < len(class_names):
        name = class_names[class_id]
    else:
        name = f"class {class_id}"
    return f"{name} {score * 100:.0f}%"


def _text_color(background: np.ndarray) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _draw_boxes_and_labels(
    canvas: Image.Image,
    boxes: np.ndarray,
    labels: list[str],
    colors: np.ndarray,
) -> None:
    """Draw each box outline and its label (on a filled tag just above the box, or inside at the top)."""
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(min(canvas.size) / 300))
    for box, label, color in zip(boxes, labels, colors):
        x1, y1, x2, y2 = (float(v) for v in box)
        fill = tuple(int(c) for c in color)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=fill, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=fill)
        draw.text((x1 + 2 - left, ty + 2 - top), label, fill=_text_color(color), font=font)


def draw_instances(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    masks: np.ndarray | None,
    class_names: Sequence[str] | None,
    score_threshold: float = 0.0,
) -> np.ndarray:
    """Draw instances on an RGB image and return a new (H, W, 3) uint8 RGB image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image (a grayscale (H, W) image is accepted too).
        boxes: (N, 4) XYXY boxes in image pixels.
        scores: (N,) scores in [0, 1].
        classes: (N,) contiguous class indices.
        masks: (N, H, W) boolean (or 0/1) masks at image resolution, or None.
        class_names: names indexed by class, or None to show indices.
        score_threshold: instances scoring below it are not drawn.
    """
    image = np.asarray(image_rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances needs an (H, W, 3) image, got shape {image.shape}")
    image = image.astype(np.uint8)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).astype(np.int64).reshape(-1)
    colors = instance_colors(len(boxes))
    keep = np.flatnonzero(scores >= score_threshold)
    if keep.size == 0:
        return image.copy()
    out = image.astype(np.float32)
    if masks is not None:
        masks = np.asarray(masks).astype(bool).reshape(len(boxes), *image.shape[:2])
        out = _blend_masks(image, masks[keep], colors[keep])
    canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    labels = [_label_text(int(classes[i]), float(scores[i]), class_names) for i in keep]
    _draw_boxes_and_labels(canvas, boxes[keep], labels, colors[keep])
    return np.array(canvas)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3|4) image as PNG atomically.

    The PNG goes to a temp file in the same folder, which is then renamed over ``path``.

    Missing parent folders are created. A reader never sees a half-written file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            pil.save(fh, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; an output picture should not be
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

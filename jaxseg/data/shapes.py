"""A deterministic synthetic instance-segmentation dataset, written to disk in COCO format.

Each image has a textured background (flat, gradient or blotchy colour, plus pixel noise) and 1-6
shapes of :data:`CLASSES` with random colour, texture, size and a slight rotation, drawn one after
another so later shapes occlude earlier ones. Annotations describe the *visible* part: an
unoccluded shape is a polygon (its exact vertices; a 32-gon for circles and ellipses), an occluded
one a compressed RLE. A shape is only placed if every shape under it keeps at least
``MIN_VISIBLE_FRACTION`` of its area and ``MIN_VISIBLE_PIXELS`` pixels.

Masks are rasterised by pycocotools from the very polygons written to the json, and pixels are
painted from those masks, so ``COCO.annToMask`` reproduces exactly what is in the image.

The split is generated on first use under ``$JAXSEG_DATASETS/shapes`` (else ``./datasets/shapes``)
in a folder named by its parameters; the same parameters give byte-identical files::

    json_path, image_root = prepare("train")   # 2000 images of 128x128
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from tqdm import tqdm

from jaxseg.errors import UserError

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ellipse", "cross")
SPLITS: dict[str, tuple[int, int]] = {"train": (2000, 1), "val": (200, 2)}  # split -> (num_images, seed)
VERSION = 1  # bump when the generator's output changes, so old caches are not reused
JSON_NAME = "instances.json"
IMAGE_DIR = "images"

MAX_OBJECTS = 6
SIZE_RANGE = (0.125, 0.625)  # diameter of a shape's bounding circle, as a fraction of the image size
MAX_ROTATION = 25.0  # degrees, for all shapes but the ellipse (any angle) and the circle
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 20
PLACEMENT_TRIES = 20
MIN_COLOUR_DISTANCE = 90.0  # RGB distance of a shape's colour from what lies under it


def default_root() -> str:
    """``$JAXSEG_DATASETS/shapes``, or ``./datasets/shapes`` when the variable is unset."""
    return os.path.join(os.environ.get("JAXSEG_DATASETS", "datasets"), "shapes")


def _resolve(split: str, num_images: int | None, image_size: int, seed: int | None) -> tuple[int, int]:
    """Check the arguments of a split and fill in its default ``(num_images, seed)``."""
    if split not in SPLITS:
        raise UserError(f"unknown shapes split {split!r}; expected one of {sorted(SPLITS)}")
    default_n, default_seed = SPLITS[split]
    num_images = default_n if num_images is None else num_images
    if num_images < 1 or image_size < 32:
        raise UserError(f"shapes {split}: need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}")
    return num_images, default_seed if seed is None else seed


def split_dir(split: str, root: str | None = None, *, num_images: int | None = None, image_size: int = 128,
              seed: int | None = None) -> str:
    """The folder that holds (or will hold) one generated split; its name encodes every parameter."""
    num_images, seed = _resolve(split, num_images, image_size, seed)
    name = f"v{VERSION}_{split}_n{num_images}_{image_size}px_seed{seed}"
    return os.path.abspath(os.path.join(root or default_root(), name))


def prepare(split: str, root: str | None = None, *, num_images: int | None = None, image_size: int = 128,
            seed: int | None = None) -> tuple[str, str]:
    """Return ``(json_path, image_root)`` of a split, generating it first if it is not on disk.

    Idempotent: a complete split is never regenerated. Generation goes to a temporary sibling
    folder (images, then the json) that is renamed into place only when complete, so an interrupted
    run leaves no final json; concurrent callers each build their own and the first rename wins.
    """
    out_dir = split_dir(split, root, num_images=num_images, image_size=image_size, seed=seed)
    json_path, image_root = os.path.join(out_dir, JSON_NAME), os.path.join(out_dir, IMAGE_DIR)
    if os.path.isfile(json_path):
        return json_path, image_root
    num_images, seed = _resolve(split, num_images, image_size, seed)
    tmp_dir = f"{out_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        generate(tmp_dir, split, num_images, image_size, seed)
        if os.path.isdir(out_dir) and not os.path.isfile(json_path):
            shutil.rmtree(out_dir)  # an incomplete leftover
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not os.path.isfile(json_path):  # else another process finished first
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_path, image_root


def generate(out_dir: str, split: str, num_images: int, image_size: int, seed: int) -> str:
    """Write ``num_images`` PNGs under ``out_dir/images`` and then ``out_dir/instances.json``; return the json path.

    Image ``i`` depends only on ``(seed, split, i, image_size)``, so a larger split extends a smaller one.
    """
    os.makedirs(os.path.join(out_dir, IMAGE_DIR), exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(num_images), desc=f"generating shapes {split}", unit="img", dynamic_ncols=True):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
        pixels, objects = render_image(rng, image_size)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, IMAGE_DIR, file_name), compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for obj in objects:
            annotations.append(_annotation(obj, image_id, len(annotations) + 1))
    dataset = {
        "info": {"description": f"jaxseg synthetic shapes, {split}", "version": str(VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    json_path = os.path.join(out_dir, JSON_NAME)
    with open(json_path + ".tmp", "w") as f:
        json.dump(dataset, f, separators=(",", ":"))
    os.replace(json_path + ".tmp", json_path)
    return json_path


# ---------------------------------------------------------------------------------------------------------------------
# One image


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """Draw one image; return its (size, size, 3) uint8 pixels and its objects, bottom to top.

    Each object is a dict with ``category`` (index into CLASSES), ``polygon`` (flat xy list),
    ``mask`` (full, bool) and ``visible`` (bool).
    """
    canvas = _background(rng, size)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        obj = _place_object(rng, size, canvas, objects)
        if obj is None:
            continue
        for other in objects:
            other["visible"] &= ~obj["mask"]
        objects.append(obj)
        ys, xs = np.nonzero(obj["mask"])
        box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        fill = _object_texture(rng, (box[0].stop - box[0].start, box[1].stop - box[1].start), obj["colour"])
        canvas[box] = np.where(obj["mask"][box][..., None], fill, canvas[box])
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _place_object(rng: np.random.Generator, size: int, canvas: np.ndarray, objects: list[dict]) -> dict | None:
    """Sample a shape that leaves every object below it visible enough and whose colour stands out; or None."""
    for _ in range(PLACEMENT_TRIES):
        category = int(rng.integers(len(CLASSES)))
        radius = 0.5 * size * math.exp(rng.uniform(*np.log(SIZE_RANGE)))
        cx, cy = rng.uniform(radius, size - radius, 2)
        polygon = np.round(_shape_polygon(rng, CLASSES[category], radius) + (cx, cy), 2).ravel().tolist()
        mask = _rasterize(polygon, size)
        if mask.sum() < MIN_VISIBLE_PIXELS or not all(_stays_visible(o, mask) for o in objects):
            continue
        below = [canvas[mask].mean(0)] + [o["colour"] for o in objects if (o["visible"] & mask).any()]
        colour = _contrasting_colour(rng, below)
        if colour is not None:
            return {"category": category, "polygon": polygon, "mask": mask, "visible": mask.copy(), "colour": colour}
    return None


def _stays_visible(obj: dict, occluder: np.ndarray) -> bool:
    """Whether ``obj`` keeps enough visible pixels once ``occluder`` is drawn over it."""
    left = int((obj["visible"] & ~occluder).sum())
    return left >= MIN_VISIBLE_PIXELS and left >= MIN_VISIBLE_FRACTION * obj["mask"].sum()


def _contrasting_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray | None:
    """A random RGB colour at least MIN_COLOUR_DISTANCE from each colour in ``avoid``, or None."""
    for _ in range(PLACEMENT_TRIES):
        colour = rng.uniform(0, 255, 3)
        if all(np.linalg.norm(colour - a) >= MIN_COLOUR_DISTANCE for a in avoid):
            return colour
    return None


def _shape_polygon(rng: np.random.Generator, name: str, radius: float) -> np.ndarray:
    """(N, 2) vertices of a shape centred at the origin whose bounding circle has ``radius``."""
    start = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION)) - math.pi / 2  # first vertex points up
    if name == "circle":
        return _regular(32, radius, start)
    if name == "square":
        return _regular(4, radius, start + math.pi / 4)
    if name == "triangle":
        return _regular(3, radius, start)
    if name == "star":
        radii = np.tile([radius, 0.42 * radius], 5)
        angles = start + np.arange(10) * math.pi / 5
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if name == "ellipse":
        unit = _regular(32, 1.0, 0.0) * (radius, radius * rng.uniform(0.4, 0.65))
        return unit @ _rotation(rng.uniform(0, math.pi)).T
    if name == "cross":
        a, b = radius * 0.92, radius * 0.3  # arm reach and half-width; (a, b) lies within the bounding circle
        quarter = np.array([(b, -a), (b, -b), (a, -b)])  # one arm's corners; the others by 90-degree turns
        arm = np.concatenate([quarter @ _rotation(k * math.pi / 2).T for k in range(4)])
        return arm @ _rotation(start + math.pi / 2).T
    raise ValueError(name)


def _regular(n: int, radius: float, start: float) -> np.ndarray:
    """Vertices of a regular n-gon."""
    angles = start + np.arange(n) * 2 * math.pi / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _rasterize(polygon: list[float], size: int) -> np.ndarray:
    """The (size, size) bool mask pycocotools draws for a flat polygon, as ``COCO.annToMask`` will."""
    rle = mask_util.merge(mask_util.frPyObjects([polygon], size, size))
    return mask_util.decode(rle).astype(bool)


# ---------------------------------------------------------------------------------------------------------------------
# Textures (float RGB in 0..255, shape (height, width, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat, two-colour gradient or blotchy background, plus pixel noise."""
    shape = (size, size)
    kind = rng.integers(3)
    if kind == 0:
        base = np.broadcast_to(rng.uniform(0, 255, 3), (*shape, 3))
    elif kind == 1:
        base = _gradient(rng, shape, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
    else:
        cells = int(rng.integers(2, 7))
        base = _upsample(rng.uniform(0, 255, (cells, cells, 3)), size)
    return base + _noise(rng, shape, rng.uniform(0, 12))


def _object_texture(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    """A fill around ``colour`` for an object's box: flat, noisy, striped or shaded."""
    kind = rng.integers(4)
    if kind == 0:
        fill = np.broadcast_to(colour, (*shape, 3))
    elif kind == 1:
        fill = colour + _noise(rng, shape, 14)
    elif kind == 2:
        phase = _plane(rng, shape) * 2 * math.pi / rng.uniform(4, 12)
        fill = colour + rng.uniform(15, 35) * np.sin(phase)[..., None]
    else:
        fill = _gradient(rng, shape, colour - 30, colour + 30)
    return fill + _noise(rng, shape, 3)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian pixel noise of standard deviation ``sigma``, shape (*shape, 3)."""
    return sigma * rng.standard_normal((*shape, 3), dtype=np.float32)


def _plane(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Pixel coordinate along a random direction."""
    theta = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return x * math.cos(theta) + y * math.sin(theta)


def _gradient(rng: np.random.Generator, shape: tuple[int, int], start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A linear blend from ``start`` to ``end`` colour along a random direction."""
    t = _plane(rng, shape)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    return start + t[..., None] * (end - start)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g, 3) grid to (size, size, 3), corners aligned."""
    pos = np.linspace(0, grid.shape[0] - 1, size)
    lo = np.minimum(pos.astype(int), grid.shape[0] - 2)
    w = (pos - lo)[:, None]
    rows = grid[lo] * (1 - w[..., None]) + grid[lo + 1] * w[..., None]
    return rows[:, lo] * (1 - w[None]) + rows[:, lo + 1] * w[None]


# ---------------------------------------------------------------------------------------------------------------------
# COCO records


def _annotation(obj: dict, image_id: int, ann_id: int) -> dict:
    """COCO annotation of an object's visible part: polygon when unoccluded, compressed RLE when occluded."""
    visible = obj["visible"]
    rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
    occluded = bool((obj["mask"] & ~visible).any())
    if occluded:
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [obj["polygon"]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category"] + 1,
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "area": float(mask_util.area(rle)),
        "iscrowd": 0,
        "segmentation": segmentation,
    }

"""Mask R-CNN mask targets: jaxseg's on-device polygon rasterisation against detectron2's host loop, in one run.

detectron2 computes each foreground RoI's 28x28 target on the host (PolygonMasks.crop_and_resize: per RoI,
shift and scale the polygons into the box, pycocotools frPyObjects + merge + decode). jaxseg computes the
same pixels inside the jitted training step (`jaxseg.models.ops.rasterize`). This times both on the same
RoIs: the default training config's foreground budget (2 images x 512 RoIs x 0.25 = 256 RoIs), COCO-like
instances (1-3 polygons of 12-60 vertices) and proposal-like boxes around them, and checks that the two
give the same pixels. jaxseg's figure is the jitted function's wall time (compile excluded, best of
--runs); the reference's the Python loop's. Ratio jaxseg / reference: lower is better.

    python benchmarks/mask_targets.py [--rois 256] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np


def make_instances(rng: np.random.Generator, n: int) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """n instances (lists of (K, 2) float64 polygons in an 800x1333 image) and a jittered box around each."""
    instances, boxes = [], []
    for _ in range(n):
        centre, radius = rng.uniform([100, 100], [1233, 700]), rng.uniform(10, 150)
        polys = []
        for _ in range(rng.integers(1, 4)):
            k = int(rng.integers(12, 61))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = radius * rng.uniform(0.4, 1.0, k)
            c = centre + rng.uniform(-radius, radius, 2) * 0.5
            polys.append(np.round(np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1), 1) * 1.25)
        pts = np.concatenate(polys)
        lo, hi = pts.min(0), pts.max(0)
        size = (hi - lo) * np.exp(rng.uniform(-0.3, 0.3, 2))
        mid = (lo + hi) / 2 + rng.uniform(-0.2, 0.2, 2) * size
        boxes.append(np.concatenate([mid - size / 2, mid + size / 2]))
        instances.append(polys)
    return instances, np.asarray(boxes, np.float32)


def reference(instances: list[list[np.ndarray]], boxes: np.ndarray, m: int) -> np.ndarray:
    """detectron2's rasterize_polygons_within_box for every RoI (box float32, polygons float64)."""
    import pycocotools.mask as mask_util

    out = np.zeros((len(boxes), m, m), bool)
    for i, (polys, box) in enumerate(zip(instances, boxes)):
        w, h = box[2] - box[0], box[3] - box[1]
        ps = copy.deepcopy([p.reshape(-1) for p in polys])
        for p in ps:
            p[0::2] = (p[0::2] - box[0]) * (m / max(w, 0.1))
            p[1::2] = (p[1::2] - box[1]) * (m / max(h, 0.1))
        out[i] = mask_util.decode(mask_util.merge(mask_util.frPyObjects([p.tolist() for p in ps], m, m)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import jax

    from jaxseg.data.masks import pack_polygons
    from jaxseg.models.ops.rasterize import rasterize_polygons_within_boxes

    m = 28
    instances, boxes = make_instances(np.random.default_rng(0), args.rois)
    slots = -(-max(sum(len(p) for p in polys) for polys in instances) // 16) * 16
    packed = pack_polygons(instances, slots, 4)
    fn = jax.jit(rasterize_polygons_within_boxes, static_argnums=4)
    dev = [jax.device_put(x) for x in (packed["xy"], packed["polygon"], packed["start"], boxes)]
    t = time.perf_counter()
    got = np.asarray(fn(*dev, m))
    compile_s = time.perf_counter() - t
    jax_s, ref_s = [], []
    for _ in range(args.runs):  # alternate, so that load drift hits both alike
        t = time.perf_counter()
        fn(*dev, m).block_until_ready()
        jax_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = reference(instances, boxes, m)
        ref_s.append(time.perf_counter() - t)
    assert np.array_equal(got, want), f"{int((got != want).sum())} pixels differ"
    result = {"rois": args.rois, "vertex_slots": slots, "jaxseg_s": min(jax_s), "reference_s": min(ref_s),
              "ratio": min(jax_s) / min(ref_s), "jaxseg_compile_s": compile_s, "identical": True}
    print(f"{args.rois} RoIs, {slots} vertex slots per instance: jaxseg {min(jax_s) * 1e3:.1f} ms "
          f"(compile {compile_s:.1f} s), detectron2-style pycocotools loop {min(ref_s) * 1e3:.1f} ms, "
          f"ratio {result['ratio']:.2f}; targets identical")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

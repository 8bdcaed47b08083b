"""Kernel times on CPU: jaxseg "ffi" (C++) and "xla" (pure JAX) against torchvision / torch, in one run.

    python benchmarks/kernels.py [--threads N] [--runs 5] [--ops roi_align,nms,paste,swap] [--json out.json]

Rows (float32, batch 1, every side on the same inputs and thread count):

* roi_align forward, and forward + backward (feature gradient of a sum), 1,000 RoIs spread over 4 FPN
  levels (p2-p5 of an 800x1216 canvas, 256 channels, FPN level assignment), one call per level with that
  level's boxes, output 7x7 (box head) and 14x14 (mask head), sampling_ratio 0, aligned; reference
  torchvision.ops.roi_align on NCHW features (its layout).
* nms of 1k, 5k and 20k clustered boxes (RPN-like, IoU 0.7), full-length output; reference
  torchvision.ops.nms.
* paste of 100 28x28 masks into 800x1333 (threshold 0.5, bool out); reference torchvision's Mask R-CNN
  paste_masks_in_image (+ threshold), and detectron2's algorithm (grid_sample over each box's region)
  written in torch, which is the exact semantics jaxseg implements.
* swap_align2nat (TensorMask) forward, and forward + backward (input gradient of a sum), on the aligned
  mask logits of an 800x1333 image (p2 resolution, 200x336, padded to 800x1344): S = 11 and 15 (121 and 225
  channels), at p2 (lambda 1, output 200x336x S^2) and p3 (lambda 2, output 100x168x (2S)^2, 484 and 900
  channels); reference: the vectorised torch CPU implementation
  tests/data/tensormask_R_50_FPN_1x/swap_align2nat_cpu.py on NCHW (upstream's op is CUDA-only).

Times are medians of --runs calls after one warm-up (jit compiles are excluded); ratio = ffi / reference
(torchvision, or torch for swap_align2nat), lower is better, target <= 1.0. Last line:
`RESULT <row>_ffi_s=... <row>_ratio=... ...`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every side (default: all)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--ops", default="roi_align,nms,paste,swap", help="comma-separated subset of the rows to run")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args()


ARGS = parse_args()
os.environ["JAXSEG_FFI_THREADS"] = str(ARGS.threads)
if ARGS.threads < (os.cpu_count() or 1):  # jax sizes its CPU thread pool from the affinity mask
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: ARGS.threads]))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

from jaxseg.kernels import ffi, nms, paste_masks, roi_align, swap_align2nat  # noqa: E402

torch.set_num_threads(ARGS.threads)
IMPLS = ("ffi", "xla")


def median_time(fn, runs: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- roi_align
LEVEL_SHAPES = [(200, 304), (100, 152), (50, 76), (25, 38)]  # p2..p5 of 800x1216
STRIDES = [4, 8, 16, 32]


def roi_align_case(rng: np.random.Generator, n_rois: int = 1000, channels: int = 256):
    feats = [rng.standard_normal((1, h, w, channels)).astype(np.float32) for h, w in LEVEL_SHAPES]
    size = np.exp(rng.uniform(np.log(24), np.log(700), n_rois))
    aspect = np.exp(rng.uniform(-1.0, 1.0, n_rois))
    bw, bh = size * np.sqrt(aspect), size / np.sqrt(aspect)
    cx, cy = rng.uniform(0, 1216, n_rois), rng.uniform(0, 800, n_rois)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clip(0, [1216, 800, 1216, 800])
    boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = np.clip(np.floor(4 + np.log2(np.sqrt(area) / 224 + 1e-8)), 2, 5).astype(int) - 2
    per_level = [boxes[level == i] for i in range(4)]
    return feats, per_level


def time_roi_align(feats, per_level, out: int, runs: int) -> dict[str, float]:
    res = {}
    jfeats = [jnp.asarray(f) for f in feats]
    jboxes = [jnp.asarray(b) for b in per_level]
    zeros = [jnp.zeros(len(b), jnp.int32) for b in per_level]

    for impl in IMPLS:
        def pooled(fs, impl=impl):
            return [roi_align(f, b, z, out, 1.0 / s, 0, True, impl) for f, b, z, s in zip(fs, jboxes, zeros, STRIDES)]

        fwd = jax.jit(pooled)
        # value and gradient, so that the forward pass is not dropped as dead code
        grad = jax.jit(jax.value_and_grad(lambda fs, pooled=pooled: sum(jnp.sum(p) for p in pooled(fs))))
        res[f"{impl}_fwd"] = median_time(lambda fwd=fwd: jax.block_until_ready(fwd(jfeats)), runs)
        res[f"{impl}_fwdbwd"] = median_time(lambda grad=grad: jax.block_until_ready(grad(jfeats)), runs)

    tfeats = [torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2))) for f in feats]
    trois = [torch.cat([torch.zeros(len(b), 1), torch.from_numpy(b)], 1) for b in per_level]

    def torch_fwd():
        with torch.no_grad():
            return [torchvision.ops.roi_align(f, r, out, 1.0 / s, 0, True) for f, r, s in zip(tfeats, trois, STRIDES)]

    def torch_fwdbwd():
        fs = [f.detach().requires_grad_(True) for f in tfeats]
        total = sum(torchvision.ops.roi_align(f, r, out, 1.0 / s, 0, True).sum() for f, r, s in zip(fs, trois, STRIDES))
        total.backward()
        return [f.grad for f in fs]

    res["torchvision_fwd"] = median_time(torch_fwd, runs)
    res["torchvision_fwdbwd"] = median_time(torch_fwdbwd, runs)
    return res


# ---------------------------------------------------------------------------------------------- nms
def nms_case(rng: np.random.Generator, n: int):
    centres = rng.uniform([0, 0], [1333, 800], (max(n // 20, 1), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 12, (n, 2))
    wh = np.exp(rng.uniform(np.log(16), np.log(300), (len(centres), 2)))[rng.integers(0, len(centres), n)]
    wh = wh * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32)


def time_nms(boxes, scores, runs: int) -> dict[str, float]:
    res = {}
    jb, js = jnp.asarray(boxes), jnp.asarray(scores)
    for impl in IMPLS:
        fn = jax.jit(lambda b, s, impl=impl: nms(b, s, 0.7, implementation=impl))
        res[impl] = median_time(lambda fn=fn: jax.block_until_ready(fn(jb, js)), runs)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    res["torchvision"] = median_time(lambda: torchvision.ops.nms(tb, ts, 0.7), runs)
    keep, keep_valid = nms(jb, js, 0.7, implementation="ffi")
    ref = torchvision.ops.nms(tb, ts, 0.7).numpy()
    assert np.array_equal(np.asarray(keep)[np.asarray(keep_valid)], ref), "nms: ffi differs from torchvision"
    res["kept"] = len(ref)
    return res


# ---------------------------------------------------------------------------------------------- paste
def paste_case(rng: np.random.Generator, n: int = 100, m: int = 28, hw=(800, 1333)):
    masks = rng.random((n, m, m)).astype(np.float32)
    size = np.exp(rng.uniform(np.log(20), np.log(700), (n, 2)))
    corner = rng.uniform([0, 0], [hw[1] - 20, hw[0] - 20], (n, 2))
    boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
    return masks, boxes


def torch_paste_d2(masks: torch.Tensor, boxes: torch.Tensor, hw, threshold: float) -> torch.Tensor:
    """detectron2's CPU algorithm (grid_sample, align_corners=False, on each box's pixel region), in torch."""
    h, w = hw
    out = torch.zeros((len(masks), h, w), dtype=torch.bool)
    for i in range(len(masks)):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        px0, py0 = max(int(np.floor(min(x0, x1))) - 1, 0), max(int(np.floor(min(y0, y1))) - 1, 0)
        px1, py1 = min(int(np.ceil(max(x0, x1))) + 1, w), min(int(np.ceil(max(y0, y1))) + 1, h)
        if px1 <= px0 or py1 <= py0:
            continue
        gx = (torch.arange(px0, px1, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(py0, py1, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None]
        region = F.grid_sample(masks[i][None, None], grid, mode="bilinear", align_corners=False)[0, 0]
        out[i, py0:py1, px0:px1] = region >= threshold
    return out


def time_paste(masks, boxes, runs: int, hw=(800, 1333)) -> dict[str, float]:
    res = {}
    jm, jb = jnp.asarray(masks), jnp.asarray(boxes)
    for impl in IMPLS:
        fn = jax.jit(lambda m, b, impl=impl: paste_masks(m, b, hw, 0.5, implementation=impl))
        res[impl] = median_time(lambda fn=fn: jax.block_until_ready(fn(jm, jb)), runs)
    tm, tb = torch.from_numpy(masks), torch.from_numpy(boxes)
    with torch.no_grad():
        res["torchvision"] = median_time(lambda: paste_masks_in_image(tm[:, None], tb, hw)[:, 0] >= 0.5, runs)
        res["torch_d2"] = median_time(lambda: torch_paste_d2(tm, tb, hw, 0.5), runs)
        ours = np.asarray(paste_masks(jm, jb, hw, 0.5, implementation="ffi"))
        res["d2_agreement"] = float(np.mean(ours == torch_paste_d2(tm, tb, hw, 0.5).numpy()))
    return res


# ---------------------------------------------------------------------------------------------- swap_align2nat
SWAP_MAP = (200, 336)  # p2 of 800x1333 padded to 800x1344: TensorMask's aligned logits, for every level
SWAP_CPU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data",
                        "tensormask_R_50_FPN_1x", "swap_align2nat_cpu.py")


def torch_swap_module():
    spec = importlib.util.spec_from_file_location("swap_align2nat_cpu", SWAP_CPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_swap(rng: np.random.Generator, s: int, lam: int, runs: int) -> dict[str, float]:
    res = {}
    x = (rng.standard_normal((1, *SWAP_MAP, s * s)) * 3).astype(np.float32)  # (1, H, W, S*S)
    jx = jnp.asarray(x)
    for impl in IMPLS:
        fwd = jax.jit(lambda a, impl=impl: swap_align2nat(a, lam, -6.0, implementation=impl))
        grad = jax.jit(jax.value_and_grad(lambda a, impl=impl: jnp.sum(swap_align2nat(a, lam, -6.0, impl))))
        res[f"{impl}_fwd"] = median_time(lambda fwd=fwd: jax.block_until_ready(fwd(jx)), runs)
        res[f"{impl}_fwdbwd"] = median_time(lambda grad=grad: jax.block_until_ready(grad(jx)), runs)
    cpu = torch_swap_module()
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def torch_fwdbwd():
        y = cpu.swap_align2nat_forward(tx, lam, -6.0)
        return float(y.sum()), cpu.swap_align2nat_backward(torch.ones_like(y), lam, *tx.shape)

    res["torch_fwd"] = median_time(lambda: cpu.swap_align2nat_forward(tx, lam, -6.0), runs)
    res["torch_fwdbwd"] = median_time(torch_fwdbwd, runs)
    ours = np.asarray(swap_align2nat(jx, lam, -6.0, implementation="ffi"))
    ref = cpu.swap_align2nat_forward(tx, lam, -6.0).permute(0, 2, 3, 1).numpy()
    res["equal"] = bool(np.array_equal(ours, ref))
    return res


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    if not ffi.is_available():
        print("the ffi kernels are not built: pip install -e . with a C++17 compiler", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    print(f"threads {ARGS.threads}, runs {ARGS.runs}, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus, "
          f"jax {jax.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    rows: list[tuple[str, float, float, float, str]] = []  # name, ffi, xla, torchvision, note

    ops = set(ARGS.ops.split(","))
    if "roi_align" in ops:
        feats, per_level = roi_align_case(rng)
        counts = "/".join(str(len(b)) for b in per_level)
        for out in (7, 14):
            r = time_roi_align(feats, per_level, out, ARGS.runs)
            for kind in ("fwd", "fwdbwd"):
                rows.append((f"roi_align_{out}x{out}_{kind}", r[f"ffi_{kind}"], r[f"xla_{kind}"],
                             r[f"torchvision_{kind}"], f"RoIs per level {counts}"))
    if "nms" in ops:
        for n in (1000, 5000, 20000):
            r = time_nms(*nms_case(rng, n), ARGS.runs)
            rows.append((f"nms_{n // 1000}k", r["ffi"], r["xla"], r["torchvision"], f"{r['kept']} kept"))
    if "paste" in ops:
        r = time_paste(*paste_case(rng), ARGS.runs)
        note = f"torch detectron2-style {r['torch_d2'] * 1e3:.1f} ms; pixels equal to it {r['d2_agreement']:.5f}"
        rows.append(("paste_100x800x1333", r["ffi"], r["xla"], r["torchvision"], note))
    if "swap" in ops:
        for level, lam in (("p2", 1), ("p3", 2)):
            for s in (11, 15):
                r = time_swap(rng, s, lam, ARGS.runs)
                out_c = (lam * s) ** 2
                note = f"ref: torch; {SWAP_MAP[0] // lam}x{SWAP_MAP[1] // lam}x{out_c} out; equal {r['equal']}"
                for kind in ("fwd", "fwdbwd"):
                    rows.append((f"swap_{level}_s{s}_{kind}", r[f"ffi_{kind}"], r[f"xla_{kind}"], r[f"torch_{kind}"],
                                 note))

    print(f"{'row':24s} {'ffi ms':>9s} {'xla ms':>9s} {'ref ms':>9s} {'ffi/ref':>7s} {'xla/ref':>7s}  note")
    figures = {}
    for name, t_ffi, t_xla, t_tv, note in rows:
        print(f"{name:24s} {t_ffi * 1e3:9.2f} {t_xla * 1e3:9.2f} {t_tv * 1e3:9.2f} {t_ffi / t_tv:7.2f} "
              f"{t_xla / t_tv:7.2f}  {note}")
        ref_name = "torch" if name.startswith("swap") else "torchvision"
        figures[name] = {"ffi_s": t_ffi, "xla_s": t_xla, f"{ref_name}_s": t_tv, "ratio": t_ffi / t_tv}
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print("RESULT " + " ".join(f"{k}_ffi_s={v['ffi_s']:.4f} {k}_ratio={v['ratio']:.2f}" for k, v in figures.items()))
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"threads": ARGS.threads, "runs": ARGS.runs, "rows": figures}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every family's inference against Mask R-CNN R50-FPN in jaxseg on CPU, in one run: BlendMask R_50_3x,
TensorMask R50-FPN 1x, EmbedMask MS_R_50_2x (and AdelaiDet's own BlendMask where an AdelaiDet source tree is given).

EmbedMask's masks are dense (every detection against every stride-4 pixel, then resized to the picture): with
embedmask in --families the mask stage alone is also timed for 25 to 200 detections, to show how it grows.

AdelaiDet's table has BlendMask R_50 at 14 FPS and Mask R-CNN R_50 at 13 FPS (V100): BlendMask should not be
slower; TensorMask is the slow one of its paper (dense windows). Every model gets seeded random weights (the test
fixtures' make_weights.py: detectron2 .pkl files and an AdelaiDet .pth) and the same 800x1333 picture
(tests/data/d2_maskrcnn/image.png resized with Pillow bilinear, so none resizes it again); they are timed
alternately through `jaxseg.Predictor` (host pad -> jitted model -> paste -> host crop). Prints the median latency
of each and its ratio to Mask R-CNN (lower is better).

With ADETSRC=<AdelaiDet source> (and D2SRC=<detectron2 source>, or detectron2 importable), AdelaiDet's own
BlendMask runs on the same picture and the same .pth in its own process (torch, the same threads; AdelaiDet is
imported unbuilt, its unused C++ extension stubbed, as the reference fixture does), and the ratio
jaxseg / AdelaiDet is printed too.

    python benchmarks/inference.py [--threads N] [--runs 5] [--families blendmask,tensormask,embedmask]
                                   [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference_maskrcnn as mrcnn  # noqa: E402  (shared image, threads and timing helpers)

BLENDMASK_CONFIG = REPO / "configs" / "BlendMask" / "R_50_3x.yaml"
BLENDMASK_FIXTURE = REPO / "tests" / "data" / "blendmask_R_50_3x"
TENSORMASK_CONFIG = REPO / "configs" / "TensorMask" / "tensormask_R_50_FPN_1x.yaml"
TENSORMASK_FIXTURE = REPO / "tests" / "data" / "tensormask_R_50_FPN_1x"
EMBEDMASK_CONFIG = REPO / "configs" / "EmbedMask" / "MS_R_50_2x.yaml"
EMBEDMASK_FIXTURE = REPO / "tests" / "data" / "embedmask_R_50"
ADET_TAG = "ADELAIDET_S="


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every model (all)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model after one warm-up (5)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    ap.add_argument("--families", default="blendmask,tensormask,embedmask", help="families to time against Mask R-CNN")
    ap.add_argument("--adelaidet-child", metavar="WEIGHTS", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _fixture_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_blendmask_weights(path: Path) -> Path:
    """The fixture's seeded random AdelaiDet weights (seed 1) as a bare-state-dict .pth (torch writes it)."""
    mw = _fixture_module("bm_make_weights", BLENDMASK_FIXTURE / "make_weights.py")
    keys = json.loads((BLENDMASK_FIXTURE / "keys.json").read_text())
    path.write_bytes(mw.to_pth_bytes(mw.make_weights(keys, seed=1)))
    return path


def write_tensormask_weights(path: Path) -> Path:
    """The TensorMask fixture's seeded random detectron2 weights (seed 1) as a model-zoo .pkl."""
    import pickle

    mw = _fixture_module("tm_make_weights", TENSORMASK_FIXTURE / "make_weights.py")
    keys = json.loads((TENSORMASK_FIXTURE / "keys.json").read_text())
    with open(path, "wb") as f:
        pickle.dump(mw.make_weights(keys, seed=1), f)
    return path


def write_embedmask_weights(path: Path) -> Path:
    """The EmbedMask fixture's seeded random weights (seed 1) as the repo's {'model': ...} .pth (torch writes it)."""
    mw = _fixture_module("em_make_weights", EMBEDMASK_FIXTURE / "make_weights.py")
    keys = json.loads((EMBEDMASK_FIXTURE / "keys.json").read_text())
    mw.save_pth(mw.make_weights(keys, seed=1), str(path))
    return path


def embedmask_mask_scaling(runs: int, counts: tuple[int, ...] = (25, 50, 100, 200)) -> dict[int, float]:
    """Median seconds of EmbedMask's mask stage alone (box-masked probabilities at stride 4 of an 800x1344 input,
    64-d embeddings, then the resizes to 800x1333 and the threshold) for each number of detections."""
    import time

    import jax
    import jax.numpy as jnp

    from jaxseg.models.embedmask.masks import box_masks, mask_probabilities, output_masks

    h4, w4, e = 200, 336, 64
    rng = np.random.default_rng(0)
    pixel = jnp.asarray(rng.normal(size=(h4, w4, e)).astype(np.float32))
    hw = jnp.array([800, 1333], jnp.int32)

    @functools.partial(jax.jit, static_argnums=3)
    def stage(embeds, margins, boxes, canvas):
        probs = mask_probabilities(pixel, embeds, margins) * box_masks(boxes / 4.0, h4, w4, float(w4), float(h4))
        return output_masks(probs, hw, hw, canvas)

    out = {}
    for d in counts:
        xy = rng.uniform(0, 600, size=(d, 2))
        boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(20, 400, size=(d, 2))], 1).astype(np.float32))
        args = (jnp.asarray(rng.normal(size=(d, e)).astype(np.float32)), jnp.full((d,), 0.05, jnp.float32), boxes)
        stage(*args, (800, 1333)).block_until_ready()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            stage(*args, (800, 1333)).block_until_ready()
            times.append(time.perf_counter() - t)
        out[d] = statistics.median(times)
    return out


def adelaidet_child(weights: str, runs: int, threads: int) -> None:
    """In its own process: AdelaiDet's BlendMask (DefaultPredictor's model call on the resized picture)."""
    import torch

    torch.set_num_threads(threads)
    ref = _fixture_module("bm_make_reference", BLENDMASK_FIXTURE / "make_reference.py")
    ref.setup_imports()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = ref.build_cfg(weights)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    bgr = mrcnn.load_image_rgb()[:, :, ::-1]
    x = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)).astype(np.float32))
    inputs = [{"image": x, "height": bgr.shape[0], "width": bgr.shape[1]}]

    def run() -> int:
        with torch.inference_mode():
            return len(model(inputs)[0]["instances"])

    times = mrcnn.time_alternating({"adelaidet": run}, runs)["adelaidet"]["wall"]
    print(ADET_TAG + json.dumps(times), flush=True)


def adelaidet_times(weights: Path, runs: int, threads: int) -> list[float] | None:
    if not os.environ.get("ADETSRC"):
        return None
    out = subprocess.run([sys.executable, __file__, "--adelaidet-child", str(weights), "--runs", str(runs),
                          "--threads", str(threads)], capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(ADET_TAG)]
    if out.returncode or not lines:
        print(f"AdelaiDet run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len(ADET_TAG):])


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from jaxseg.config import setup_cfg
    from jaxseg.engine.predictor import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="jaxseg_bench_bm_"))
    os.environ.setdefault("JAXSEG_CACHE_DIR", str(tmp / "xla"))
    families = [f for f in args.families.split(",") if f]
    mr_weights = mrcnn.write_weights(tmp / "mask_rcnn_random.pkl")
    predictors = {"maskrcnn": Predictor(setup_cfg(str(mrcnn.CONFIG), []), str(mr_weights))}
    if "blendmask" in families:
        bm_weights = write_blendmask_weights(tmp / "blendmask_R_50_3x_random.pth")
        predictors["blendmask"] = Predictor(setup_cfg(str(BLENDMASK_CONFIG), []), str(bm_weights))
    if "tensormask" in families:
        tm_weights = write_tensormask_weights(tmp / "tensormask_random.pkl")
        predictors["tensormask"] = Predictor(setup_cfg(str(TENSORMASK_CONFIG), []), str(tm_weights))
    if "embedmask" in families:
        em_weights = write_embedmask_weights(tmp / "embedmask_random.pth")
        predictors["embedmask"] = Predictor(setup_cfg(str(EMBEDMASK_CONFIG), []), str(em_weights))
    bgr = np.ascontiguousarray(mrcnn.load_image_rgb()[:, :, ::-1])
    times = mrcnn.time_alternating({k: functools.partial(lambda p: len(p(bgr).scores), p)
                                    for k, p in predictors.items()}, args.runs)
    fig = {k: statistics.median(v["wall"]) for k, v in times.items()}
    for k in predictors:
        if k != "maskrcnn":
            fig[f"ratio_{k}_over_maskrcnn"] = fig[k] / fig["maskrcnn"]
    fig["runs"] = {k: v["wall"] for k, v in times.items()}
    adet = adelaidet_times(bm_weights, args.runs, args.threads) if "blendmask" in families else None
    if adet is not None:
        fig["adelaidet"] = statistics.median(adet)
        fig["ratio_jaxseg_over_adelaidet"] = fig["blendmask"] / fig["adelaidet"]
    if "embedmask" in families:
        fig["embedmask_mask_stage_s"] = embedmask_mask_scaling(args.runs)
    fig["threads"] = args.threads
    return fig


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mrcnn.configure_threads(args.threads)
    if args.adelaidet_child:
        adelaidet_child(args.adelaidet_child, args.runs, args.threads)
        return
    fig = benchmark(args)
    print(f"800x1333, {args.threads} threads, median of {args.runs} runs (after one warm-up):")
    names = {"maskrcnn": "Mask R-CNN R50-FPN", "blendmask": "BlendMask R_50_3x", "tensormask": "TensorMask R50-FPN",
             "embedmask": "EmbedMask MS_R_50_2x"}
    line = "RESULT"
    for k in fig["runs"]:
        ratio = "" if k == "maskrcnn" else f"   ratio to Mask R-CNN {fig[f'ratio_{k}_over_maskrcnn']:.3f}"
        print(f"  jaxseg {names[k]:20s} {fig[k]:7.3f} s{ratio}   runs " + ", ".join(f"{t:.2f}" for t in fig["runs"][k]))
        line += f" {k}_s={fig[k]:.3f}"
        if k != "maskrcnn":
            line += f" {k}_ratio={fig[f'ratio_{k}_over_maskrcnn']:.3f}"
    if "adelaidet" in fig:
        print(f"  AdelaiDet BlendMask         {fig['adelaidet']:7.3f} s   jaxseg / AdelaiDet "
              f"{fig['ratio_jaxseg_over_adelaidet']:.3f}")
        line += f" adelaidet_s={fig['adelaidet']:.3f} jaxseg_over_adelaidet={fig['ratio_jaxseg_over_adelaidet']:.3f}"
    elif "blendmask" in fig:
        print("  (set ADETSRC to an AdelaiDet source tree to time AdelaiDet's BlendMask too)")
    if "embedmask_mask_stage_s" in fig:
        stage = fig["embedmask_mask_stage_s"]
        print("  EmbedMask mask stage alone: " + ", ".join(f"{d} dets {t:.3f} s" for d, t in stage.items()))
        line += "".join(f" embedmask_masks_{d}_s={t:.3f}" for d, t in stage.items())
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()

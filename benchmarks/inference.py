"""Every family's inference against Mask R-CNN R50-FPN in jaxseg on CPU, in one run: BlendMask R_50_3x,
TensorMask R50-FPN 1x (and AdelaiDet's own BlendMask where an AdelaiDet source tree is given).

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

    python benchmarks/inference.py [--threads N] [--runs 5] [--families blendmask,tensormask] [--json out.json]
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
ADET_TAG = "ADELAIDET_S="


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every model (all)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model after one warm-up (5)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    ap.add_argument("--families", default="blendmask,tensormask", help="families to time against Mask R-CNN")
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
    names = {"maskrcnn": "Mask R-CNN R50-FPN", "blendmask": "BlendMask R_50_3x", "tensormask": "TensorMask R50-FPN"}
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
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()

"""BlendMask R_50_3x against Mask R-CNN R50-FPN inference in jaxseg on CPU, in one run (and AdelaiDet's own
BlendMask where an AdelaiDet source tree is given).

AdelaiDet's table has BlendMask R_50 at 14 FPS and Mask R-CNN R_50 at 13 FPS (V100): BlendMask should not be
slower. Both jaxseg models get seeded random weights (the test fixtures' make_weights.py: a detectron2 .pkl and an
AdelaiDet .pth) and the same 800x1333 picture (tests/data/d2_maskrcnn/image.png resized with Pillow bilinear, so
neither resizes it again); they are timed alternately through `jaxseg.Predictor` (host pad -> jitted model ->
paste -> host crop). Prints the median latency of each and the ratio BlendMask / Mask R-CNN (lower is better).

With ADETSRC=<AdelaiDet source> (and D2SRC=<detectron2 source>, or detectron2 importable), AdelaiDet's own
BlendMask runs on the same picture and the same .pth in its own process (torch, the same threads; AdelaiDet is
imported unbuilt, its unused C++ extension stubbed, as the reference fixture does), and the ratio
jaxseg / AdelaiDet is printed too.

    python benchmarks/inference_blendmask.py [--threads N] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
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
ADET_TAG = "ADELAIDET_S="


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every model (all)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model after one warm-up (5)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
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
    bm_weights = write_blendmask_weights(tmp / "blendmask_R_50_3x_random.pth")
    mr_weights = mrcnn.write_weights(tmp / "mask_rcnn_random.pkl")
    blendmask = Predictor(setup_cfg(str(BLENDMASK_CONFIG), []), str(bm_weights))
    maskrcnn = Predictor(setup_cfg(str(mrcnn.CONFIG), []), str(mr_weights))
    bgr = np.ascontiguousarray(mrcnn.load_image_rgb()[:, :, ::-1])
    times = mrcnn.time_alternating({"blendmask": lambda: len(blendmask(bgr).scores),
                                    "maskrcnn": lambda: len(maskrcnn(bgr).scores)}, args.runs)
    fig = {k: statistics.median(v["wall"]) for k, v in times.items()}
    fig["ratio_blendmask_over_maskrcnn"] = fig["blendmask"] / fig["maskrcnn"]
    fig["runs"] = {k: v["wall"] for k, v in times.items()}
    adet = adelaidet_times(bm_weights, args.runs, args.threads)
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
    print(f"  jaxseg BlendMask R_50_3x   {fig['blendmask']:7.3f} s   runs {fig['runs']['blendmask']}")
    print(f"  jaxseg Mask R-CNN R50-FPN  {fig['maskrcnn']:7.3f} s   runs {fig['runs']['maskrcnn']}")
    line = f"RESULT blendmask_s={fig['blendmask']:.3f} maskrcnn_s={fig['maskrcnn']:.3f} " \
           f"ratio={fig['ratio_blendmask_over_maskrcnn']:.3f}"
    if "adelaidet" in fig:
        print(f"  AdelaiDet BlendMask        {fig['adelaidet']:7.3f} s")
        line += f" adelaidet_s={fig['adelaidet']:.3f} jaxseg_over_adelaidet={fig['ratio_jaxseg_over_adelaidet']:.3f}"
    else:
        print("  (set ADETSRC to an AdelaiDet source tree to time AdelaiDet's BlendMask too)")
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()

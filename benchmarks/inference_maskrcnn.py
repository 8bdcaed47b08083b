"""Mask R-CNN R50-FPN inference on CPU: jaxseg against torchvision's maskrcnn_resnet50_fpn, in one run.

Both models get random weights and the same 800x1333 picture (tests/data/d2_maskrcnn/image.png resized
with Pillow bilinear, so neither resizes it again), the same number of CPU threads, and return 100
detections with pasted masks. Prints the median latency of each, the ratio jaxseg / torchvision (lower is
better), the cold compile time of jaxseg's first call with an empty persistent compilation cache, and the
first-call time of a fresh process that reuses that cache.

    python benchmarks/inference_maskrcnn.py [--threads N] [--runs 5] [--kernels xla|ffi] [--json out.json] [--breakdown]
    python benchmarks/inference_maskrcnn.py --mixed-sizes 20 [--buckets 800x1088,1088x800,...] [--seed 0]

--mixed-sizes N: jaxseg alone on N seeded synthetic pictures of COCO-like sizes (each side drawn from
480..640, both orientations: the fixture picture resized to them), once with the default padding (to
multiples of 32) and once with TEST.BUCKETS, each in a process without a persistent compilation cache. Prints
the distinct padded input sizes, the XLA programs each predictor stage built and their compile time, the time
of the first pass over the pictures (compiles included) and of a second pass, and the mean padded pixels per
real pixel: the trade between compiles and padding.

Threads: torch.set_num_threads(N). XLA:CPU sizes its intra-op thread pool from the process's CPU
affinity mask (tsl::port::MaxParallelism), and no XLA_FLAGS entry changes that pool in jax 0.10:
`--xla_cpu_multi_thread_eigen=true` is a real flag (and the default); the bare token
`intra_op_parallelism_threads=N` is accepted but ignored (`--intra_op_parallelism_threads` would abort as an
unknown flag). Both are set for the record, and when N is below the usable cores the process (and its child)
is also pinned to N cores with os.sched_setaffinity before jax starts: that is what bounds XLA's threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"
FIXTURE = REPO / "tests" / "data" / "d2_maskrcnn"
IMAGE_HW = (800, 1333)
WEIGHT_SEED = 1
FIRST_CALL_TAG = "FIRST_CALL_S="
MIXED_TAG = "MIXED_FIGURES="
KERNELS_ENV = "JAXSEG_BENCH_KERNELS"
COCO_SIDE_RANGE = (480, 640)  # sides of the synthetic COCO-like pictures of --mixed-sizes (COCO val: mostly 640x480)
# hold every resized COCO picture (MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333): short side <= 800, long <= 1333 -> 1344;
# the 1088 ones hold pictures up to 4:3 (800 x 1067), most of COCO
DEFAULT_BUCKETS = "800x1088,1088x800,800x1344,1344x800"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both (all)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model after one warm-up (5)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    ap.add_argument("--breakdown", action="store_true", help="also time each backbone (ResNet+FPN) alone")
    ap.add_argument("--first-call-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kernels", default="", help="MODEL.KERNELS for jaxseg: '' (automatic), xla, ffi, triton")
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--mixed-sizes", type=int, default=0, metavar="N",
                    help="instead: jaxseg on N pictures of mixed COCO-like sizes, without and with TEST.BUCKETS")
    ap.add_argument("--buckets", default=DEFAULT_BUCKETS,
                    help=f"--mixed-sizes: TEST.BUCKETS as HxW,HxW,... ({DEFAULT_BUCKETS})")
    ap.add_argument("--seed", type=int, default=0, help="--mixed-sizes: seed of the picture sizes (0)")
    ap.add_argument("--mixed-child", choices=("plain", "buckets"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.kernels:
        os.environ[KERNELS_ENV] = args.kernels
    return args


def configure_threads(n: int) -> None:
    """Before jax is imported: XLA flags for the record, and a CPU affinity of n cores if n < usable cores."""
    flags = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
    current = os.environ.get("XLA_FLAGS", "")
    if flags not in current:  # the child inherits the parent's flags; keep them identical
        os.environ["XLA_FLAGS"] = f"{current} {flags}".strip()
    usable = sorted(os.sched_getaffinity(0))
    if n < len(usable):
        os.sched_setaffinity(0, usable[:n])


# ---------------------------------------------------------------- inputs


def load_image_rgb() -> np.ndarray:
    """The fixture picture resized (Pillow bilinear, uint8) to exactly IMAGE_HW, as (H, W, 3) RGB uint8."""
    from PIL import Image

    with Image.open(FIXTURE / "image.png") as im:
        im = im.convert("RGB").resize((IMAGE_HW[1], IMAGE_HW[0]), Image.BILINEAR)
        return np.array(im)


def write_weights(path: Path) -> Path:
    """Seeded random detectron2 model-zoo weights (make_weights.py in the fixture dir) pickled to `path`."""
    spec = importlib.util.spec_from_file_location("make_weights", FIXTURE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = json.loads((FIXTURE / "keys.json").read_text())
    with open(path, "wb") as f:
        pickle.dump(module.make_weights(keys, seed=WEIGHT_SEED), f)
    return path


# ---------------------------------------------------------------- models


def build_jaxseg(weights: Path, cache_dir: Path, opts: list[str] | None = None) -> Any:
    """jaxseg Predictor on the R50-FPN 3x config (plus config `opts`); its persistent compilation cache lives
    in `cache_dir`."""
    os.environ["JAXSEG_CACHE_DIR"] = str(cache_dir)
    from jaxseg.config import setup_cfg
    from jaxseg.engine.predictor import Predictor

    kernels = os.environ.get(KERNELS_ENV, "")  # --kernels, passed to the child process through the environment
    return Predictor(setup_cfg(str(CONFIG), ["MODEL.KERNELS", kernels, *(opts or [])]), str(weights))


def build_torchvision(threads: int) -> Any:
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()


def jaxseg_runner(predictor: Any, image_bgr: np.ndarray) -> Callable[[], int]:
    """A call of the whole predictor (host pad -> jitted model -> host crop); returns the detection count."""
    return lambda: len(predictor(image_bgr).scores)


def torchvision_runner(model: Any, image_rgb: np.ndarray) -> Callable[[], int]:
    import torch

    tensor = torch.from_numpy(image_rgb).permute(2, 0, 1).float().div(255.0).contiguous()

    def run() -> int:
        with torch.inference_mode():
            return len(model([tensor])[0]["scores"])

    return run


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_alternating(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, dict[str, list[float]]]:
    """One warm-up each, then `runs` rounds that call every fn once, so load drift hits all of them alike.

    Returns {name: {"wall": seconds per run, "cpu": CPU seconds of this process (all threads) per run}}.
    """
    for fn in fns.values():
        fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            cpu_start = time.process_time()
            times[name]["wall"].append(timed(fn)[0])
            times[name]["cpu"].append(time.process_time() - cpu_start)
    return times


def first_call_in_new_process(weights: Path, cache_dir: Path, threads: int) -> float:
    """Run this script again with --first-call-only on the same (filled) cache; parse its first-call time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--first-call-only", "--threads", str(threads),
           "--weights", str(weights)]
    env = {**os.environ, "JAXSEG_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(FIRST_CALL_TAG):
            return float(line[len(FIRST_CALL_TAG):])
    raise RuntimeError(f"child run failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")


def backbone_times(predictor: Any, tv_model: Any, image_rgb: np.ndarray, runs: int) -> dict[str, float]:
    """Median time of each model's backbone (ResNet-50 + FPN) alone on the same padded 800x1344 input."""
    import jax
    import torch

    padded, hw = predictor.preprocess(image_rgb[:, :, ::-1])
    image_hw = np.array([hw], np.int32)
    fwd = jax.jit(lambda v, x, s: predictor.model.apply(v, x, s, method="extract_features"))
    jax_fn = lambda: jax.block_until_ready(fwd(predictor.variables, padded, image_hw))
    tensor = torch.from_numpy(image_rgb).permute(2, 0, 1).float().div(255.0)
    with torch.inference_mode():
        batch = tv_model.transform([tensor])[0].tensors

    def torch_fn() -> Any:
        with torch.inference_mode():
            return tv_model.backbone(batch)

    times = time_alternating({"jaxseg": jax_fn, "torchvision": torch_fn}, runs)
    return {name: statistics.median(t["wall"]) for name, t in times.items()}


# ---------------------------------------------------------------- report


def _runs(times: list[float], cpu_s: float) -> str:
    return "runs " + ", ".join(f"{t:.3f}" for t in times) + f"; median CPU {cpu_s:.2f} s"


def table_rows(fig: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [
        ("jaxseg median (s)", f"{fig['jaxseg_s']:.3f}", _runs(fig["jaxseg_runs"], fig["jaxseg_cpu_s"])),
        ("torchvision median (s)", f"{fig['torchvision_s']:.3f}",
         _runs(fig["torchvision_runs"], fig["torchvision_cpu_s"])),
        ("ratio jaxseg/torchvision", f"{fig['ratio']:.3f}", "lower is better; target <= 1.0"),
        ("jaxseg cold first call (s)", f"{fig['cold_compile_s']:.2f}",
         f"empty compilation cache; ~{fig['cold_compile_s'] - fig['jaxseg_s']:.1f} s of it trace + compile"),
        ("jaxseg warm-cache first call (s)", f"{fig['warm_cache_first_call_s']:.2f}",
         f"new process; cache {fig['cache_files']} entries, +{fig['child_cache_misses']} (misses)"),
        ("detections jaxseg / torchvision", f"{fig['jaxseg_detections']}/{fig['torchvision_detections']}",
         "both paste their masks at image size"),
        ("load average (1 min) before/after", f"{fig['load_before']:.1f}/{fig['load_after']:.1f}",
         f"{os.cpu_count()} cores; other work on the machine skews both sides"),
    ]
    if "backbone_jaxseg_s" in fig:
        for side in ("jaxseg", "torchvision"):
            rows.append((f"backbone {side} (s)", f"{fig[f'backbone_{side}_s']:.3f}", "ResNet-50 + FPN alone"))
    return rows


def print_report(fig: dict[str, Any]) -> None:
    print(f"Mask R-CNN R50-FPN, CPU, {fig['threads']} threads, input {IMAGE_HW[0]}x{IMAGE_HW[1]}, "
          f"median of {fig['runs']} timed runs after 1 warm-up")
    rows = table_rows(fig)
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>9}  {note}")
    print(f"RESULT jaxseg_s={fig['jaxseg_s']:.4f} torchvision_s={fig['torchvision_s']:.4f} "
          f"ratio={fig['ratio']:.3f} cold_compile_s={fig['cold_compile_s']:.2f} "
          f"warm_cache_first_call_s={fig['warm_cache_first_call_s']:.2f}")


# ---------------------------------------------------------------- --mixed-sizes


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """'800x1088,1088x800' -> ((800, 1088), (1088, 800))."""
    try:
        return tuple((int(h), int(w)) for h, w in (item.lower().split("x") for item in text.split(",") if item))
    except ValueError:
        raise SystemExit(f"--buckets {text!r}: expected HxW,HxW,... (e.g. {DEFAULT_BUCKETS})") from None


def mixed_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """n seeded (H, W) picture sizes, each side in COCO_SIDE_RANGE, landscape or portrait with even odds."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(n):
        short, long = sorted(int(v) for v in rng.integers(COCO_SIDE_RANGE[0], COCO_SIDE_RANGE[1] + 1, size=2))
        sizes.append((short, long) if rng.random() < 0.5 else (long, short))
    return sizes


def mixed_pictures(sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The fixture picture resized (Pillow bilinear) to each (H, W), as BGR uint8 (the predictor's format)."""
    from PIL import Image

    with Image.open(FIXTURE / "image.png") as im:
        rgb = im.convert("RGB")
        return [np.ascontiguousarray(np.array(rgb.resize((w, h), Image.BILINEAR))[:, :, ::-1]) for h, w in sizes]


def trace_lower_listener(store: dict[str, float], names: tuple[str, ...]) -> Callable[..., None]:
    """A jax monitoring listener that adds the tracing and MLIR lowering seconds of the functions `names`."""

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in TRACE_EVENTS and any(name in str(kwargs.get("fun_name", "")) for name in names):
            store[event] = store.get(event, 0.0) + float(duration)

    return listener


def mixed_child(args: argparse.Namespace) -> None:
    """Child mode: one predictor (plain padding or TEST.BUCKETS) on the mixed-size pictures, no persistent cache;
    prints its figures as one JSON line."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # every program compiled here, none loaded
    from jaxseg.engine.predictor import STAGE_FUNCTION_NAMES

    trace: dict[str, float] = {}
    jax.monitoring.register_event_duration_secs_listener(
        trace_lower_listener(trace, tuple(STAGE_FUNCTION_NAMES.values())))
    buckets = parse_buckets(args.buckets) if args.mixed_child == "buckets" else ()
    opts = ["TEST.BUCKETS", repr(buckets)] if buckets else []
    with tempfile.TemporaryDirectory(prefix="jaxseg_bench_cache_") as cache_dir:  # stays empty: cache off
        predictor = build_jaxseg(Path(args.weights), Path(cache_dir), opts)
    sizes = mixed_sizes(args.mixed_sizes, args.seed)
    pictures = mixed_pictures(sizes)
    spec = predictor.input_spec
    ratios = []
    for h, w in sizes:
        nh, nw = spec.test_size(h, w)
        ph, pw = spec.padded_size(nh, nw)
        ratios.append(ph * pw / (nh * nw))
    passes = []
    for _ in range(2):  # the first pass compiles, the second runs what is compiled
        start = time.perf_counter()
        detections = sum(len(predictor(picture).scores) for picture in pictures)
        passes.append(time.perf_counter() - start)
    seen = predictor.sizes_seen()
    fig = {"mode": args.mixed_child, "buckets": [list(b) for b in buckets], "images": len(sizes),
           "padded_sizes": len(seen["forward"]), "canvas_sizes": len(seen["postprocess"]),
           "compiles": predictor.compile_counts(), "compile_s": predictor.compile_seconds(),
           "trace_lower_s": sum(trace.values()), "first_pass_s": passes[0], "second_pass_s": passes[1],
           "padded_per_real_px": float(np.mean(ratios)), "max_padded_per_real_px": float(np.max(ratios)),
           "detections": detections}
    print(f"{MIXED_TAG}{json.dumps(fig)}", flush=True)


def mixed_sizes_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Both modes of --mixed-sizes, each in a fresh process (this script with --mixed-child) on the same weights."""
    load_before = os.getloadavg()[0]
    fig: dict[str, Any] = {"threads": args.threads, "images": args.mixed_sizes, "seed": args.seed,
                           "sizes": [list(s) for s in mixed_sizes(args.mixed_sizes, args.seed)]}
    with tempfile.TemporaryDirectory(prefix="jaxseg_bench_") as tmp:
        weights = write_weights(Path(tmp) / "weights.pkl")
        for mode in ("plain", "buckets"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--mixed-child", mode, "--threads", str(args.threads),
                   "--weights", str(weights), "--mixed-sizes", str(args.mixed_sizes), "--seed", str(args.seed),
                   "--buckets", args.buckets]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MIXED_TAG)]
            if not lines:
                raise RuntimeError(f"{mode} child failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
            fig[mode] = json.loads(lines[-1][len(MIXED_TAG):])
    fig["load_before"], fig["load_after"] = load_before, os.getloadavg()[0]
    return fig


def print_mixed_report(fig: dict[str, Any]) -> None:
    plain, bucketed = fig["plain"], fig["buckets"]
    print(f"jaxseg Mask R-CNN R50-FPN, CPU, {fig['threads']} threads, {fig['images']} pictures of mixed COCO-like "
          f"sizes (sides {COCO_SIDE_RANGE[0]}..{COCO_SIDE_RANGE[1]}, seed {fig['seed']}), no persistent cache")
    print("  TEST.BUCKETS: " + ", ".join(f"{h}x{w}" for h, w in bucketed["buckets"]))
    rows = [
        ("distinct padded input sizes", "padded_sizes", "d"),
        ("stage-1 programs (forward)", lambda m: m["compiles"]["forward"], "d"),
        ("stage-2 programs (postprocess)", lambda m: m["compiles"]["postprocess"], "d"),
        ("stage-1 XLA compile (s)", lambda m: m["compile_s"]["forward"], ".1f"),
        ("stage-2 XLA compile (s)", lambda m: m["compile_s"]["postprocess"], ".1f"),
        ("trace + lower, both stages (s)", "trace_lower_s", ".1f"),
        ("first pass, compiles included (s)", "first_pass_s", ".1f"),
        ("second pass, all compiled (s)", "second_pass_s", ".1f"),
        ("mean padded px / real px", "padded_per_real_px", ".3f"),
        ("max padded px / real px", "max_padded_per_real_px", ".3f"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"  {'':<{width}}  {'plain':>8}  {'buckets':>8}")
    for name, key, fmt in rows:
        get = key if callable(key) else (lambda m, k=key: m[k])
        print(f"  {name:<{width}}  {get(plain):>8{fmt}}  {get(bucketed):>8{fmt}}")
    print(f"  load average (1 min) before/after: {fig['load_before']:.1f}/{fig['load_after']:.1f} "
          f"({os.cpu_count()} cores)")
    parts = []
    for mode, m in (("plain", plain), ("buckets", bucketed)):
        parts += [f"{mode}_sizes={m['padded_sizes']}", f"{mode}_forward_compiles={m['compiles']['forward']}",
                  f"{mode}_postprocess_compiles={m['compiles']['postprocess']}",
                  f"{mode}_compile_s={sum(m['compile_s'].values()):.1f}",
                  f"{mode}_first_pass_s={m['first_pass_s']:.1f}",
                  f"{mode}_second_pass_s={m['second_pass_s']:.1f}", f"{mode}_padding={m['padded_per_real_px']:.3f}"]
    print(f"RESULT mixed images={fig['images']} " + " ".join(parts))


# ---------------------------------------------------------------- entry points


def first_call_only(args: argparse.Namespace) -> None:
    """Child mode: build the predictor on $JAXSEG_CACHE_DIR and print the time of its first call."""
    predictor = build_jaxseg(Path(args.weights), Path(os.environ["JAXSEG_CACHE_DIR"]))
    seconds, _ = timed(jaxseg_runner(predictor, load_image_rgb()[:, :, ::-1].copy()))
    print(f"{FIRST_CALL_TAG}{seconds:.4f}", flush=True)


def measure(args: argparse.Namespace, predictor: Any, tv_model: Any, image_rgb: np.ndarray) -> dict[str, Any]:
    """jaxseg's cold first call, then alternating timed runs of both models."""
    jax_fn = jaxseg_runner(predictor, image_rgb[:, :, ::-1].copy())
    tv_fn = torchvision_runner(tv_model, image_rgb)
    cold_s, jax_count = timed(jax_fn)
    times = time_alternating({"jaxseg": jax_fn, "torchvision": tv_fn}, args.runs)
    fig: dict[str, Any] = {"threads": args.threads, "runs": args.runs, "image_hw": list(IMAGE_HW),
                           "cold_compile_s": cold_s, "jaxseg_detections": jax_count,
                           "torchvision_detections": tv_fn()}
    for side in ("jaxseg", "torchvision"):
        fig[f"{side}_s"], fig[f"{side}_runs"] = statistics.median(times[side]["wall"]), times[side]["wall"]
        fig[f"{side}_cpu_s"] = statistics.median(times[side]["cpu"])
    fig["ratio"] = fig["jaxseg_s"] / fig["torchvision_s"]
    return fig


def count_files(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file())


def warm_cache_figures(weights: Path, cache_dir: Path, threads: int) -> dict[str, Any]:
    """First call of a new process on the filled cache, and how many entries that process had to add."""
    before = count_files(cache_dir)
    seconds = first_call_in_new_process(weights, cache_dir, threads)
    return {"cache_files": before, "warm_cache_first_call_s": seconds,
            "child_cache_misses": count_files(cache_dir) - before}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="jaxseg_bench_") as tmp:
        weights = write_weights(Path(tmp) / "weights.pkl")
        cache_dir = Path(tmp) / "xla_cache"
        image_rgb = load_image_rgb()
        predictor = build_jaxseg(weights, cache_dir)
        tv_model = build_torchvision(args.threads)
        fig = measure(args, predictor, tv_model, image_rgb)
        fig.update(warm_cache_figures(weights, cache_dir, args.threads))
        if args.breakdown:  # after the child, so the cache it sees holds only the predictor's entry
            backbone = backbone_times(predictor, tv_model, image_rgb, args.runs)
            fig["backbone_jaxseg_s"], fig["backbone_torchvision_s"] = backbone["jaxseg"], backbone["torchvision"]
    fig["load_before"], fig["load_after"] = load_before, os.getloadavg()[0]
    return fig


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.mixed_sizes < 0:
        raise SystemExit("--threads and --runs must be >= 1, --mixed-sizes >= 0")
    configure_threads(args.threads)
    if args.first_call_only:
        first_call_only(args)
        return
    if args.mixed_child:
        mixed_child(args)
        return
    if args.mixed_sizes:
        fig = mixed_sizes_benchmark(args)
        print_mixed_report(fig)
    else:
        fig = benchmark(args)
        print_report(fig)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")


if __name__ == "__main__":
    main()

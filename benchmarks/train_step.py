"""Mask R-CNN R50-FPN training step on CPU: jaxseg against torchvision's maskrcnn_resnet50_fpn, in one run.

Both models start from random weights, train on the same batch of 2 images of 800x1333 with the same 6
ground-truth instances each (boxes, classes, polygons; torchvision gets their full-image masks), and take
one SGD step (momentum 0.9, weight decay 1e-4) per call: forward, losses, backward, update. The learning
rate is 0, so every call repeats the same computation on the initial weights: with lr 0.02 on random weights
jaxseg's loss went to NaN after the first step, and the later steps timed a degenerate model (NaN boxes
cost ROIAlign no samples). Each framework's loss is printed, to show that it stays finite.
jaxseg rasterises the polygons inside each sampled RoI, as detectron2 (INPUT.MASK_FORMAT polygon).
jaxseg runs detectron2's mask_rcnn_R_50_FPN_3x
(FrozenBN, FREEZE_AT 2, 512 RoIs per image); torchvision its maskrcnn_resnet50_fpn (FrozenBN, 3 trainable
backbone stages, 512 RoIs per image).

Each framework runs in its own worker process (this script, --worker NAME), as a user runs one: sharing a
process made each slower after the other had run (allocator and thread-pool state: jaxseg's step went from
22 s to 25-30 s once torch had stepped in the same process). The parent starts both, has each take one
warm-up step, then asks them for --runs steps alternately, so that load drift hits both alike, and prints
the median step time of each, the CPU seconds and page faults per step, the ratio jaxseg / torchvision
(lower is better; target <= 1.0) and jaxseg's compile time.

--hugepages runs both workers with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for
malloc's large blocks). Both frameworks allocate gigabytes of fresh activations per step, and with 4 KiB
pages the kernel spends seconds per step faulting them in; huge pages speed both up.

    python benchmarks/train_step.py [--runs 3] [--hugepages] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"
HW = (800, 1333)
BATCH = 2
INSTANCES = 6
LR = 0.0  # see the module docstring


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Random images and GT: boxes (XYXY), classes (0..79), polygons (ellipses of 32 vertices in the boxes)
    and the full-image masks of those polygons (pycocotools)."""
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    h, w = HW
    images = rng.integers(0, 256, (BATCH, h, w, 3), dtype=np.uint8)
    xy = rng.uniform(0, [w - 300, h - 300], (BATCH, INSTANCES, 2))
    wh = rng.uniform(40, 300, (BATCH, INSTANCES, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    centre, radius = (xy + wh / 2)[..., None, :], (wh / 2)[..., None, :]
    polygons = centre + radius * np.stack([np.cos(t), np.sin(t)], -1)  # (B, I, 32, 2) float64
    masks = np.zeros((BATCH, INSTANCES, h, w), np.uint8)
    for b in range(BATCH):
        for i in range(INSTANCES):
            rle = mask_util.frPyObjects([polygons[b, i].ravel().tolist()], h, w)
            masks[b, i] = mask_util.decode(mask_util.merge(rle))
    classes = rng.integers(0, 80, (BATCH, INSTANCES))
    return {"images": images, "boxes": boxes, "classes": classes, "polygons": polygons, "masks": masks}


def jaxseg_step(data: dict[str, np.ndarray]):
    """A callable running one jitted jaxseg train step, and the compile time."""
    import jax

    from jaxseg.config import setup_cfg
    from jaxseg.data.masks import pack_polygons
    from jaxseg.engine import sharding as shd
    from jaxseg.engine.train import init_train_state, make_train_step
    from jaxseg.models.registry import build_model

    cfg = setup_cfg(str(CONFIG), ["MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATCH", str(BATCH), "SOLVER.BASE_LR", str(LR),
                                  "SOLVER.WARMUP_ITERS", "0", "DATALOADER.MAX_GT_INSTANCES", str(INSTANCES)])
    packed = [pack_polygons([[p] for p in image], 32, 4) for image in data["polygons"]]  # INPUT.MASK_FORMAT polygon
    padded = np.zeros((BATCH, -(-HW[0] // 32) * 32, -(-HW[1] // 32) * 32, 3), np.uint8)  # size divisibility
    padded[:, :HW[0], :HW[1]] = data["images"][..., ::-1]  # BGR, as detectron2 configs expect
    batch = {"images": padded, "image_hw": np.array([HW] * BATCH, np.int32),
             "gt_boxes": data["boxes"], "gt_classes": data["classes"].astype(np.int32),
             "gt_valid": np.ones((BATCH, INSTANCES), bool),
             **{f"gt_polygon_{k}": np.stack([p[k] for p in packed]) for k in ("xy", "polygon", "start")}}
    batch["gt_polygon_id"] = batch.pop("gt_polygon_polygon")
    model = build_model(cfg)
    mesh = shd.build_mesh(1)
    state, tx = init_train_state(cfg, model, mesh, seed=0)
    step = make_train_step(cfg, model, tx, mesh, state, jax.random.PRNGKey(0))
    gbatch = shd.global_batch(batch, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], gbatch)
        return float(metrics["total_loss"])

    return run, compile_s


def torchvision_step(data: dict[str, np.ndarray]):
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    # maskrcnn_resnet50_fpn(weights=None) would train BatchNorm and every stage; build it as it is built for
    # fine-tuning instead (FrozenBN, 3 trainable stages), the work detectron2's config asks of jaxseg
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=3)
    model = torchvision.models.detection.MaskRCNN(backbone, num_classes=81)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9,
                          weight_decay=1e-4)
    images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in data["images"]]
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(c + 1).long(),
                "masks": torch.from_numpy(m)} for b, c, m in zip(data["boxes"], data["classes"], data["masks"])]

    def run() -> float:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def worker(name: str) -> None:
    """Build one framework's step, report readiness, then run a step per "step" line read from stdin and
    answer each with one json line (wall seconds, CPU seconds, minor page faults)."""
    import resource

    data = make_batch()
    if name == "jaxseg":
        step, compile_s = jaxseg_step(data)
    else:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        step, compile_s = torchvision_step(data), 0.0
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not mix with the replies
    out.write(json.dumps({"ready": True, "compile_s": compile_s}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "step":
            break
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loss = step()
        dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
        out.write(json.dumps({"s": dt, "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                              "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
                              "loss": loss}) + "\n")
        out.flush()


class Worker:
    """A worker process driven line by line."""

    def __init__(self, name: str, env: dict[str, str]):
        import subprocess

        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hugepages", action="store_true", help="GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in both")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--worker", choices=("jaxseg", "torchvision"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    env = dict(os.environ)
    if args.hugepages:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    workers = {}
    for name in ("jaxseg", "torchvision"):  # one at a time, so that jaxseg's compile time is its own
        workers[name] = Worker(name, env)
        ready = workers[name].read()
        if name == "jaxseg":
            compile_s = ready["compile_s"]
    for w in workers.values():
        w.step()  # warm-up
    steps: dict[str, list[dict]] = {name: [] for name in workers}
    for _ in range(args.runs):
        for name, w in workers.items():
            steps[name].append(w.step())
    for w in workers.values():
        w.close()
    threads = os.cpu_count() or 1
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("s", "cpu_s", "sys_s", "minflt")}
           for k, v in steps.items()}
    ratio = med["jaxseg"]["s"] / med["torchvision"]["s"]
    fig = {"threads": threads, "batch": BATCH, "hw": HW, "hugepages": args.hugepages,
           "jaxseg_s": med["jaxseg"]["s"], "torchvision_s": med["torchvision"]["s"], "ratio": ratio,
           "jaxseg_compile_s": compile_s, "steps": steps, "load_avg": os.getloadavg()}
    print(f"train step, batch {BATCH} x {HW[0]}x{HW[1]}, {threads} threads, one process each, "
          f"{'huge pages' if args.hugepages else 'default malloc'}, median of {args.runs}:")
    for k in ("jaxseg", "torchvision"):
        m, runs = med[k], ", ".join(f"{r['s']:.2f}" for r in steps[k])
        print(f"  {k:12s} {m['s']:7.2f} s  (cpu {m['cpu_s']:.1f} s, of which sys {m['sys_s']:.1f} s; "
              f"{m['minflt'] / 1e6:.2f} M page faults)   runs {runs}; loss {steps[k][-1]['loss']:.4g}")
    print(f"  jaxseg compile {compile_s:.1f} s; load average {fig['load_avg'][0]:.1f}")
    print(f"RESULT jaxseg_s={med['jaxseg']['s']:.3f} torchvision_s={med['torchvision']['s']:.3f} ratio={ratio:.3f} "
          f"jaxseg_compile_s={compile_s:.1f} hugepages={int(args.hugepages)}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    sys.exit(main())

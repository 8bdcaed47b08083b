"""Multi-process runs: two localhost processes of 4 CPU devices train and evaluate as one process of 8 does,
only process 0 writes files, the test set is split over the processes; plus the launch checks that need no run.

The runs (tests/distributed_worker.py, a 3-iteration quickstart on 64 px shapes images with two test datasets)
start together in a module fixture: one process with 8 devices and a pair joined by jax.distributed.
"""

import json
import math
import os
import socket
import subprocess
import sys

import distributed_worker as worker
import pytest

from jaxseg.engine import sharding as shd
from jaxseg.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distributed_worker.py")
TIMEOUT_S = 900
LOSSES = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


# ---------------------------------------------------------------------------------------------- the runs
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root, tag: str, devices: int, num_processes: int = 1, process_id: int = 0, port: int = 0):
    """One worker process; its log goes to root/<tag>.log, its result to root/<tag>.json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXSEG_NUM_PROCESSES", "JAXSEG_PROCESS_ID",
                                                                     "JAXSEG_COORDINATOR", "JAX_COORDINATOR"))}
    env.pop("SLURM_NTASKS", None)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = root / ("out_single" if num_processes == 1 else "out_multi")
    cmd = [sys.executable, WORKER, "--data", str(root / "data"), "--output-dir", str(out),
           "--result", str(root / f"{tag}.json"), "--num-processes", str(num_processes),
           "--process-id", str(process_id), "--port", str(port)]
    log = open(root / f"{tag}.log", "w")
    return tag, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root)), log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    worker.register_datasets(str(root / "data"))  # generate the images once, before the workers start
    port = free_port()
    procs = [start(root, "single", 8), *(start(root, f"multi{i}", 4, 2, i, port) for i in range(2))]
    failed = []
    try:
        for tag, proc, log in procs:
            try:
                if proc.wait(timeout=TIMEOUT_S) != 0:
                    failed.append(tag)
            except subprocess.TimeoutExpired:
                failed.append(tag)
            log.close()
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        tails = "\n".join(f"--- {t}\n" + (root / f"{t}.log").read_text()[-3000:] for t in failed)
        pytest.fail(f"worker(s) {failed} failed:\n{tails}")
    results = {tag: json.loads((root / f"{tag}.json").read_text()) for tag, _, _ in procs}
    return root, results


def metrics_lines(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def same_number(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def test_two_processes_train_like_one(runs):
    root, r = runs
    assert [(r[t]["process_index"], r[t]["process_count"], r[t]["devices"]) for t in ("single", "multi0", "multi1")] \
        == [(0, 1, 8), (0, 2, 8), (1, 2, 8)]
    one = {m["iteration"]: m for m in metrics_lines(root / "out_single") if "total_loss" in m}
    two = {m["iteration"]: m for m in metrics_lines(root / "out_multi") if "total_loss" in m}
    assert sorted(one) == sorted(two) == [0, 1, 2]
    for it in one:
        for k in LOSSES:
            assert same_number(one[it][k], two[it][k]), (it, k, one[it][k], two[it][k])
    for k in LOSSES:  # both processes see the same (global) step results
        assert r["multi0"]["result"][k] == r["multi1"]["result"][k]
        assert same_number(r["single"]["result"][k], r["multi1"]["result"][k])


def test_only_process_zero_writes(runs):
    root, r = runs
    # process 1 writes only its own part of the orbax checkpoint (every process must call save)
    assert all(p.startswith("checkpoints" + os.sep) for p in r["multi1"]["written"]), r["multi1"]["written"]
    written = r["multi0"]["written"]
    for name in worker.TESTS:
        for f in ("coco_instances_results.json", "metrics.json"):
            assert os.path.join("inference", name, f) in written
    assert "metrics.json" in written
    assert any(p.startswith("events.out.tfevents") for p in written)
    assert any(p.startswith("predictions" + os.sep) and p.endswith(".png") for p in written)
    assert not any(line.startswith(("final evaluation", "Evaluation results")) for line in r["multi1"]["stdout"])
    def listing(out) -> list[str]:  # event file names carry a time stamp
        return sorted("events" if p.startswith("events.out.tfevents") else p for p in os.listdir(out))

    assert listing(root / "out_multi") == listing(root / "out_single")


def test_split_evaluation_matches_one_process(runs):
    root, r = runs
    one, two_a, two_b = (r[t]["result"]["eval"] for t in ("single", "multi0", "multi1"))
    assert two_a == two_b or json.dumps(two_a) == json.dumps(two_b)  # NaN != NaN: compare as text
    assert set(one) == set(two_a) == set(worker.TESTS)
    for name in worker.TESTS:
        assert set(one[name]) == set(two_a[name]) == {"bbox", "segm"}
        for task in one[name]:
            for k, v in one[name][task].items():
                assert same_number(v, two_a[name][task][k]), (name, task, k, v, two_a[name][task][k])

    gt_one, gt_a, gt_b = (r[t]["ground_truth_eval"] for t in ("single", "multi0", "multi1"))
    assert gt_one["bbox"]["AP"] == gt_a["bbox"]["AP"] == gt_b["bbox"]["AP"] == 100.0  # not 100 on a slice
    assert gt_one["segm"]["AP"] == gt_a["segm"]["AP"] == gt_b["segm"]["AP"] == 100.0

    def scores(out) -> dict[int, list[float]]:  # per image: the detection scores, highest first
        with open(os.path.join(out, "inference", worker.TESTS[0], "coco_instances_results.json")) as f:
            records = json.load(f)
        per_image: dict[int, list[float]] = {}
        for d in records:
            per_image.setdefault(d["image_id"], []).append(d["score"])
        return {i: sorted(s, reverse=True) for i, s in per_image.items()}

    single, multi = scores(root / "out_single"), scores(root / "out_multi")
    assert sorted(single) == sorted(multi) and len(multi) == 5  # every image, from both processes
    for i in single:
        assert len(single[i]) == len(multi[i]) > 0
        assert all(abs(a - b) < 1e-3 for a, b in zip(single[i], multi[i])), (i, single[i], multi[i])


def test_several_test_datasets_after_training(runs):
    root, r = runs
    last = metrics_lines(root / "out_single")[-1]
    for name in worker.TESTS:
        for task in ("bbox", "segm"):
            assert f"{name}/{task}/AP" in last
    printed = [line for line in r["single"]["stdout"] if line.startswith("final evaluation")]
    assert [line.split(":")[0] for line in printed] == [f"final evaluation {n} {t}" for n in worker.TESTS
                                                         for t in ("bbox", "segm")]


# ---------------------------------------------------------------------------------------------- no run needed
def test_distributed_settings_from_environment():
    assert shd.distributed_settings({}) is None
    assert shd.distributed_settings({"SLURM_NTASKS": "1"}) is None
    assert shd.distributed_settings({"SLURM_NTASKS": "4"}) == {}
    assert shd.distributed_settings({"JAXSEG_NUM_PROCESSES": "1", "SLURM_NTASKS": "4"}) is None
    assert shd.distributed_settings({"JAXSEG_NUM_PROCESSES": "2", "JAXSEG_PROCESS_ID": "1",
                                     "JAXSEG_COORDINATOR": "h:1"}) == \
        {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert shd.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "3",
                                     "JAX_PROCESS_ID": "0"}) == \
        {"coordinator_address": "h:2", "num_processes": 3, "process_id": 0}
    for bad in ({"JAXSEG_NUM_PROCESSES": "2"}, {"JAXSEG_NUM_PROCESSES": "x"},
                {"JAXSEG_NUM_PROCESSES": "2", "JAXSEG_PROCESS_ID": "2", "JAXSEG_COORDINATOR": "h:1"}):
        with pytest.raises(UserError):
            shd.distributed_settings(bad)


def test_initialize_comes_before_any_backend_call(monkeypatch):
    import jax

    calls = []
    for name in ("process_count", "process_index", "devices", "device_count", "local_device_count"):
        monkeypatch.setattr(jax, name, lambda *a, _n=name, **k: calls.append(_n) or 1)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(("initialize", kw)))
    real_update = jax.config.update
    monkeypatch.setattr(jax.config, "update", lambda k, v: calls.append((k, v)) if "collectives" in k
                        else real_update(k, v))
    monkeypatch.delenv("JAX_CPU_COLLECTIVES_IMPLEMENTATION", raising=False)
    for k, v in {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}.items():
        monkeypatch.setenv(k, v)
    assert shd.maybe_initialize_distributed() is True
    assert calls[:2] == [("jax_cpu_collectives_implementation", "gloo"),
                         ("initialize", {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                                         "process_id": 0})], calls
    calls.clear()
    assert shd.maybe_initialize_distributed({}) is False
    assert calls == []


def test_negative_num_devices_is_refused(capsys):
    with pytest.raises(UserError, match="num-devices -1"):
        shd.build_mesh(-1)
    from jaxseg.main import main

    quickstart = os.path.join(os.path.dirname(HERE), "configs", "quickstart", "shapes_mask_rcnn.yaml")
    assert main(["--config", quickstart, "--num-devices", "-1", "DATASETS.TRAIN", "('no_such_dataset',)"]) == 2
    assert "--num-devices -1" in capsys.readouterr().err


def test_flat_eval_and_evaluate_all_shapes(monkeypatch):
    import jaxseg.engine.inference as inference
    from jaxseg.config import setup_cfg
    from jaxseg.engine.train import _flat_eval

    metrics = {"bbox": {"AP": 1.0}, "segm": {"AP": 2.0}}
    monkeypatch.setattr(inference, "inference_on_dataset", lambda cfg, variables, name, out, predictor: metrics)
    quickstart = os.path.join(os.path.dirname(HERE), "configs", "quickstart", "shapes_mask_rcnn.yaml")

    def evaluate(*names):
        cfg = setup_cfg(quickstart, ["DATASETS.TEST", str(tuple(names))])
        return inference.evaluate_all(cfg, {}, predictor=object())

    assert evaluate("a") == evaluate("a", "a") == metrics  # a name listed twice is one dataset
    assert evaluate("a", "b") == {"a": metrics, "b": metrics}
    assert _flat_eval(evaluate("a")) == {"bbox/AP": 1.0, "segm/AP": 2.0}
    assert _flat_eval(evaluate("a", "b")) == {"a/bbox/AP": 1.0, "a/segm/AP": 2.0, "b/bbox/AP": 1.0,
                                              "b/segm/AP": 2.0}

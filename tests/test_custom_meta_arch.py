"""A family defined outside the package (tests/toy_family.py) trains, evaluates and predicts through the CLI.

As a detectron2 user's own train_net.py does: import the module that registers the family (its config
keys, its meta-architecture, its checkpoint adapter), then call `jaxseg.main.main([...])` in the same
process. Nothing in the engine knows about the family; the checks below say whether the engine prepared
what the family declared (its InputSpec, its TargetSpec) and used only the model interface.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jaxseg.config import add_config, setup_cfg
from jaxseg.data.catalog import get_dataset_dicts
from jaxseg.data.image_io import read_image
from jaxseg.data.target_spec import BOX_KEYS
from jaxseg.data.transforms import resize_image
from jaxseg.main import main
from jaxseg.models.registry import META_ARCH_REGISTRY, build_model

MAX_ITER = 200
BATCH = 8
MIN_SIZE = 80  # shapes images are 128x128: resized to 80x80, a multiple of 16 but not of 32
SIZE_DIVISIBILITY = 16  # the toy's (toy_family.SIZE_DIVISIBILITY); R-CNN's is 32
COCO_ID_RANGE = range(1, 7)  # the shapes json's category ids


def _write_config(path: Path, output_dir: Path) -> Path:
    path.write_text(f"""\
MODEL:
  META_ARCHITECTURE: "ToyBoxNet"
  TOY:
    HIDDEN: 32
    MIN_SIZE: {MIN_SIZE}
    MAX_SIZE: 160
DATASETS:
  TRAIN: ("shapes_train",)
  TEST: ("shapes_val",)
DATALOADER:
  MAX_GT_INSTANCES: 8
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_BATCH: {BATCH}
  BASE_LR: 0.02
  MAX_ITER: {MAX_ITER}
  STEPS: ()
  WARMUP_ITERS: 10
  CHECKPOINT_PERIOD: 1000
  LOG_PERIOD: 1
SEED: 0
OUTPUT_DIR: "{output_dir}"
""")
    return path


@pytest.fixture(scope="module", autouse=True)
def toy():
    """Import tests/toy_family.py, which registers the family, as a user's train_net.py does before calling main.

    Its config keys (MODEL.TOY.*) are in the default tree for this module's tests only: other modules count the
    default keys. (Its registry entries stay: no test lists them exhaustively.)"""
    from jaxseg.config import config as config_module

    saved = list(config_module._EXTENSIONS)
    import toy_family

    add_config(toy_family.add_toy_config)  # a no-op when the import just registered it
    yield toy_family
    config_module._EXTENSIONS[:] = saved


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, shapes_root, toy):
    """Train the toy through `main` once: (config file, OUTPUT_DIR, the batches `losses` was traced with)."""
    work = tmp_path_factory.mktemp("toy")
    out = work / "train"
    config = _write_config(work / "toy_boxnet.yaml", out)
    toy.TRACED_BATCHES.clear()
    assert main(["--config", str(config)]) == 0
    return config, out, list(toy.TRACED_BATCHES)


def _metrics(out: Path) -> list[dict]:
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_results_json(path: Path, num_images: int | None = None) -> list[dict]:
    """COCO results records: image id, a shapes category id, an XYWH box inside the 128x128 image, a score."""
    records = json.loads(path.read_text())
    assert isinstance(records, list) and records, path
    for r in records:
        assert r["category_id"] in COCO_ID_RANGE, r
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128.01 and y + h <= 128.01, r
        assert 0.0 < r["score"] <= 1.0 and "segmentation" not in r, r
    if num_images is not None:
        assert len({r["image_id"] for r in records}) <= num_images
    return records


def test_registered_outside_the_package(toy):
    assert "ToyBoxNet" in META_ARCH_REGISTRY.names() and "GeneralizedRCNN" in META_ARCH_REGISTRY.names()
    cfg = setup_cfg(None, ["MODEL.META_ARCHITECTURE", "ToyBoxNet", "MODEL.TOY.HIDDEN", "8"])
    model = build_model(cfg)
    assert isinstance(model, toy.ToyBoxNet) and model.hidden == 8 and model.num_classes == 6
    assert model.input_spec.format == "RGB" and model.input_spec.size_divisibility == SIZE_DIVISIBILITY
    assert model.target_spec.keys() == BOX_KEYS and toy.SIZE_DIVISIBILITY == SIZE_DIVISIBILITY
    from jaxseg.checkpoint.adapters import get_adapter

    assert get_adapter(model.checkpoint_adapter).to_path("conv0.kernel") == ("params", "conv0", "kernel")


def test_trains_through_the_cli(toy_run):
    _, out, traced = toy_run
    records = _metrics(out)
    losses = {r["iteration"]: r["total_loss"] for r in records if "total_loss" in r}
    assert sorted(losses) == list(range(MAX_ITER))
    assert all(np.isfinite(v) for v in losses.values())
    first, last = np.mean([losses[i] for i in range(5)]), np.mean([losses[i] for i in range(MAX_ITER - 20, MAX_ITER)])
    assert last < 0.6 * first, (first, last)  # 4.4 -> 2.0 on CPU
    for key in ("loss_cls", "loss_box_reg"):
        values = [r[key] for r in records if key in r]
        assert np.mean(values[-20:]) < 0.8 * np.mean(values[:5]), key
    assert os.path.isdir(out / "checkpoints" / str(MAX_ITER))
    # the final evaluation: box AP only, in metrics.json and under inference/
    final = records[-1]
    assert "bbox/AP" in final and not any(k.startswith("segm/") for k in final), final
    inference = json.loads((out / "inference" / "metrics.json").read_text())
    assert set(inference) == {"bbox"} and inference["bbox"]["AP50"] > 0.0, inference  # 0.7 (percent) on CPU
    _check_results_json(out / "inference" / "coco_instances_results.json", num_images=200)
    assert len(list((out / "predictions").glob("*.png"))) == 8
    # what the training step handed to losses: exactly the TargetSpec keys, pictures padded by the InputSpec
    assert traced, "losses was never traced"
    for batch in traced:
        assert set(batch) == {"images", "image_hw", *BOX_KEYS}, batch
        n, hp, wp, c = batch["images"][0]
        assert batch["images"][1] == "uint8" and c == 3 and n == BATCH
        assert (hp, wp) == (MIN_SIZE, MIN_SIZE) and hp % SIZE_DIVISIBILITY == 0 and hp % 32 != 0, batch


def test_loader_prepares_the_toys_batches(toy_run):
    """The engine's loader, given the toy's specs: no masks, RGB pictures resized to the toy's edge."""
    from jaxseg.data.loaders import build_train_loader

    config, _, _ = toy_run
    cfg = setup_cfg(str(config))
    model = build_model(cfg)
    loader = build_train_loader(cfg, get_dataset_dicts("shapes_train"), model.input_spec, model.target_spec, seed=0,
                                num_workers=0)
    batch = loader.load_batch(0)
    assert set(batch) == {"images", "image_hw", "image_id", *BOX_KEYS}
    assert batch["images"].shape == (BATCH, MIN_SIZE, MIN_SIZE, 3)
    np.testing.assert_array_equal(batch["image_hw"], [[MIN_SIZE, MIN_SIZE]] * BATCH)
    for image, index in zip(batch["images"], loader.batch_indices(0)):
        rgb = resize_image(read_image(loader.dataset_dicts[index]["file_name"], format="RGB"), (MIN_SIZE, MIN_SIZE))
        assert np.array_equal(image, rgb) or np.array_equal(image, rgb[:, ::-1])  # RANDOM_FLIP horizontal


def test_eval_only_from_its_checkpoint(toy_run, tmp_path, capsys):
    config, out, _ = toy_run
    rc = main(["--config", str(config), "--eval-only", "MODEL.WEIGHTS", str(out / "checkpoints"),
               "OUTPUT_DIR", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bbox" in printed and "AP50" in printed and "segm" not in printed, printed[-2000:]
    results = json.loads((tmp_path / "inference" / "metrics.json").read_text())
    assert set(results) == {"bbox"}
    _check_results_json(tmp_path / "inference" / "coco_instances_results.json", num_images=200)
    # the same weights as the training run's final evaluation
    trained = json.loads((out / "inference" / "metrics.json").read_text())
    assert results["bbox"]["AP"] == pytest.approx(trained["bbox"]["AP"], abs=1e-6)


def _val_pictures(tmp_path: Path, n: int = 2) -> list[str]:
    """The first val images, copied under COCO-style numeric names."""
    paths = []
    for record in get_dataset_dicts("shapes_val")[:n]:
        dst = tmp_path / f"{int(record['image_id']):012d}.png"
        dst.write_bytes(Path(record["file_name"]).read_bytes())
        paths.append(str(dst))
    return paths


def test_predict_writes_json(toy_run, tmp_path):
    config, out, _ = toy_run
    paths = _val_pictures(tmp_path)
    pred = tmp_path / "pred"
    rc = main(["--config", str(config), "--predict", *paths, "--output", str(pred),
               "MODEL.WEIGHTS", str(out / "checkpoints" / str(MAX_ITER))])
    assert rc == 0
    records = _check_results_json(pred / "coco_instances_results.json")
    assert {r["image_id"] for r in records} <= {int(Path(p).stem) for p in paths}
    assert {Path(r["file_name"]).name for r in records} <= {Path(p).name for p in paths}
    for p in paths:
        assert (pred / Path(p).name).is_file()


def test_predict_feeds_the_models_channel_order(toy_run, tmp_path):
    """--predict gives what `Predictor.from_path` (which reads pictures in model.input_spec.format) gives."""
    from jaxseg.engine.predictor import Predictor
    from jaxseg.evaluation.coco import instances_to_coco_json

    config, out, _ = toy_run
    paths = _val_pictures(tmp_path, n=1)
    weights = str(out / "checkpoints")
    pred = tmp_path / "pred"
    assert main(["--config", str(config), "--predict", *paths, "--output", str(pred), "MODEL.WEIGHTS", weights]) == 0
    cli = json.loads((pred / "coco_instances_results.json").read_text())
    predictor = Predictor(setup_cfg(str(config), ["MODEL.WEIGHTS", weights]))
    inst = predictor.from_path(paths[0])
    expected = instances_to_coco_json(inst, int(Path(paths[0]).stem), Path(paths[0]).name,
                                      {i: i + 1 for i in range(6)})
    assert [(r["category_id"], r["bbox"]) for r in cli] == [(r["category_id"], r["bbox"]) for r in expected]

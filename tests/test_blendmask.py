"""BlendMask through the CLI paths a user takes: --eval-only on a COCO-format dataset, checkpoints of another family
refused, AdelaiDet's own config files loading unchanged."""

import os
import re

import pytest

from jaxseg.config import setup_cfg
from jaxseg.data.catalog import remove_dataset
from jaxseg.data.coco import register_coco_instances
from jaxseg.main import main

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "blendmask_R_50_3x")
CONFIGS = os.path.join(HERE, "..", "configs")
BLENDMASK = os.path.join(CONFIGS, "BlendMask", "R_50_3x.yaml")
MASK_RCNN = os.path.join(CONFIGS, "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")


@pytest.fixture
def astronaut_dataset():
    """The training fixture's gt.json (5 instances on image.png) as a registered COCO-format dataset."""
    register_coco_instances("bm_astronaut", os.path.join(FIXTURE, "train", "gt.json"), FIXTURE)
    yield "bm_astronaut"
    remove_dataset("bm_astronaut")


@pytest.mark.slow
def test_eval_only_prints_detectron2_bbox_and_segm_tables(blendmask_weights, astronaut_dataset, tmp_path, capsys):
    rc = main(["--config", BLENDMASK, "--eval-only", "MODEL.WEIGHTS", blendmask_weights["bare"],
               "DATASETS.TEST", f"('{astronaut_dataset}',)", "OUTPUT_DIR", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    for task in ("bbox", "segm"):
        assert f"Evaluation results for {task}:" in out
        table = out[out.index(f"Evaluation results for {task}:"):]
        assert re.search(r"\|\s*AP\s*\|\s*AP50\s*\|\s*AP75\s*\|\s*APs\s*\|\s*APm\s*\|\s*APl\s*\|", table)


@pytest.mark.slow
def test_mask_rcnn_checkpoint_refused_by_blendmask_config(d2_maskrcnn_weights, tmp_path, capsys):
    image = os.path.join(FIXTURE, "image.png")
    rc = main(["--config", BLENDMASK, "--predict", image, "--output", str(tmp_path), "MODEL.WEIGHTS",
               d2_maskrcnn_weights])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxseg: error:"), err
    assert "missing: " in err[0] and "unexpected: " in err[0]
    assert "basis_module." in err[0] and "roi_heads." in err[0], "names a missing and an unexpected tensor"
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_blendmask_checkpoint_refused_by_mask_rcnn_config(blendmask_weights, tmp_path, capsys):
    image = os.path.join(FIXTURE, "image.png")
    rc = main(["--config", MASK_RCNN, "--predict", image, "--output", str(tmp_path), "MODEL.WEIGHTS",
               blendmask_weights["bare"]])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxseg: error:"), err
    assert "missing: " in err[0] and "unexpected: " in err[0] and "fcos_head" in err[0]
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["R_50_1x", "R_50_3x", "R_101_3x"])
def test_adelaidet_config_files_load_unchanged(name, tmp_path):
    """configs/BlendMask/*.yaml are AdelaiDet's files plus a header comment: the files without it load to the
    same config, with AdelaiDet's effective values."""
    for f in ("Base-BlendMask.yaml", f"{name}.yaml"):
        text = open(os.path.join(CONFIGS, "BlendMask", f)).read()
        (tmp_path / f).write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("#")))
    upstream = setup_cfg(str(tmp_path / f"{name}.yaml"), [])
    ours = setup_cfg(os.path.join(CONFIGS, "BlendMask", f"{name}.yaml"), [])
    assert upstream == ours
    m = ours.MODEL
    assert (m.META_ARCHITECTURE, m.PROPOSAL_GENERATOR.NAME, m.BACKBONE.NAME) == (
        "BlendMask", "FCOS", "build_fcos_resnet_fpn_backbone")
    assert m.FCOS.THRESH_WITH_CTR is True and m.FCOS.USE_SCALE is False and m.BASIS_MODULE.LOSS_ON is True
    assert m.RESNETS.DEPTH == (101 if "101" in name else 50) and m.FPN.IN_FEATURES == ["res3", "res4", "res5"]

"""Tests of jaxseg.config: defaults, YAML with _BASE_, KEY VALUE overrides, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxseg import config
from jaxseg.config import add_config, get_cfg, setup_cfg
from jaxseg.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
R50_3X = CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"

# detectron2's own files, as published (configs/Base-RCNN-FPN.yaml and three COCO-InstanceSegmentation files).
UPSTREAM_BASE = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]  # One size for each in feature map
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]  # Three aspect ratios (same for all in feature maps)
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000  # Per FPN level
    PRE_NMS_TOPK_TEST: 1000  # Per FPN level
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
  ROI_MASK_HEAD:
    NAME: "MaskRCNNConvUpsampleHead"
    NUM_CONV: 4
    POOLER_RESOLUTION: 14
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
  STEPS: (60000, 80000)
  MAX_ITER: 90000
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""
UPSTREAM_MASK_RCNN = """\
_BASE_: "../Base-RCNN-FPN.yaml"
MODEL:
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
  MASK_ON: True
  RESNETS:
    DEPTH: {depth}
"""
UPSTREAM_3X = """\
SOLVER:
  STEPS: (210000, 250000)
  MAX_ITER: 270000
"""
UPSTREAM_FILES = {
    "mask_rcnn_R_50_FPN_1x.yaml": UPSTREAM_MASK_RCNN.format(depth=50),
    "mask_rcnn_R_50_FPN_3x.yaml": UPSTREAM_MASK_RCNN.format(depth=50) + UPSTREAM_3X,
    "mask_rcnn_R_101_FPN_3x.yaml": UPSTREAM_MASK_RCNN.format(depth=101) + UPSTREAM_3X,
}


def write(path: Path, text: str) -> str:
    """Write a config file (making its folder) and return its path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def flat(node: dict, prefix: str = "") -> dict:
    """The config as {full key: value}."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def user_error(fn, *args) -> str:
    """Call fn(*args), expect a UserError, and return its message."""
    with pytest.raises(UserError) as info:
        fn(*args)
    return str(info.value)


# -- the shipped configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads(path: Path) -> None:
    cfg = setup_cfg(str(path), [])
    assert cfg.is_frozen()
    assert path.read_text().startswith("#"), "each config starts with a comment: its command and result"


def test_r50_3x_effective_values() -> None:
    cfg = setup_cfg(str(R50_3X), [])
    m = cfg.MODEL
    assert m.META_ARCHITECTURE == "GeneralizedRCNN"
    assert m.PIXEL_MEAN == [103.530, 116.280, 123.675] and m.PIXEL_STD == [1.0, 1.0, 1.0]
    assert (cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == ("BGR", 800, 1333)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert (m.BACKBONE.NAME, m.BACKBONE.FREEZE_AT) == ("build_resnet_fpn_backbone", 2)
    assert m.MASK_ON is True and m.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    r = m.RESNETS
    assert (r.DEPTH, r.NORM, r.STRIDE_IN_1X1, r.RES5_DILATION) == (50, "FrozenBN", True, 1)
    assert (r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.DEFORM_ON_PER_STAGE) == (1, 64, [False] * 4)
    assert r.OUT_FEATURES == ["res2", "res3", "res4", "res5"] == m.FPN.IN_FEATURES
    assert (m.FPN.OUT_CHANNELS, m.FPN.NORM, m.FPN.FUSE_TYPE) == (256, "", "sum")
    assert m.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert m.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]] and m.ANCHOR_GENERATOR.OFFSET == 0.0
    assert m.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert (m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST, m.RPN.NMS_THRESH) == (1000, 1000, 0.7)
    assert (m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN) == (2000, 1000)
    assert m.RPN.BBOX_REG_WEIGHTS == (1.0, 1.0, 1.0, 1.0) and m.PROPOSAL_GENERATOR.MIN_SIZE == 0
    assert (m.ROI_HEADS.NAME, m.ROI_HEADS.NUM_CLASSES) == ("StandardROIHeads", 80)
    assert (m.ROI_HEADS.SCORE_THRESH_TEST, m.ROI_HEADS.NMS_THRESH_TEST) == (0.05, 0.5)
    b = m.ROI_BOX_HEAD
    assert (b.NAME, b.NUM_CONV, b.NUM_FC, b.FC_DIM) == ("FastRCNNConvFCHead", 0, 2, 1024)
    assert (b.POOLER_RESOLUTION, b.POOLER_TYPE, b.POOLER_SAMPLING_RATIO) == (7, "ROIAlignV2", 0)
    assert b.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0) and b.CLS_AGNOSTIC_BBOX_REG is False
    k = m.ROI_MASK_HEAD
    assert (k.NAME, k.NUM_CONV, k.CONV_DIM, k.POOLER_RESOLUTION) == ("MaskRCNNConvUpsampleHead", 4, 256, 14)
    assert (k.POOLER_TYPE, k.CLS_AGNOSTIC_MASK, k.NORM) == ("ROIAlignV2", False, "")
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100 and cfg.FLOAT32_PRECISION == ""
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.STEPS, s.MAX_ITER) == (16, 0.02, (210000, 250000), 270000)


def test_r50_1x_and_r101_3x() -> None:
    r50 = setup_cfg(str(CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml"), [])
    assert (r50.SOLVER.STEPS, r50.SOLVER.MAX_ITER, r50.MODEL.RESNETS.DEPTH) == ((60000, 80000), 90000, 50)
    r101 = setup_cfg(str(CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_101_FPN_3x.yaml"), [])
    assert r101.MODEL.RESNETS.DEPTH == 101
    assert r101.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert r101.SOLVER.MAX_ITER == 270000 and r101.MODEL.MASK_ON is True


def test_upstream_files_load_unchanged_and_match_ours(tmp_path: Path) -> None:
    write(tmp_path / "Base-RCNN-FPN.yaml", UPSTREAM_BASE)
    for name, text in UPSTREAM_FILES.items():
        upstream = setup_cfg(write(tmp_path / "COCO-InstanceSegmentation" / name, text), [])
        ours = setup_cfg(str(CONFIGS / "COCO-InstanceSegmentation" / name), [])
        assert flat(upstream) == flat(ours), name


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_keep_detectron2_values_and_types() -> None:
    cfg = get_cfg()
    assert cfg.VERSION == 2 and cfg.OUTPUT_DIR == "./output" and cfg.SEED == -1 and cfg.GLOBAL.HACK == 1.0
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads" and cfg.MODEL.RPN.PRE_NMS_TOPK_TEST == 6000
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.SOLVER.STEPS == (30000,)
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS == (512,) * 8
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS is None and cfg.SOLVER.WARMUP_FACTOR == 0.001
    assert cfg.TEST.AUG.ENABLED is False and cfg.SOLVER.AMP.ENABLED is False
    # detectron2 defaults.py has 192 keys; jaxseg adds 5 (SOLVER.LOG_PERIOD, MODEL.FSDP, MODEL.KERNELS,
    # DATALOADER.MAX_GT_INSTANCES, TEST.BUCKETS); the built-in families add AdelaiDet's 58 (6 outside its groups,
    # MODEL.FCOS 31, MODEL.BLENDMASK 8, MODEL.BASIS_MODULE 11, MODEL.TOP_MODULE 2), TensorMask's 16
    # (MODEL.TENSOR_MASK) and jaxseg's 4 MODEL.EMBEDMASK (upstream EmbedMask adds none)
    adelaidet = ("MODEL.MOBILENET", "MODEL.BACKBONE.ANTI_ALIAS", "MODEL.RESNETS.DEFORM_INTERVAL", "INPUT.HFLIP_TRAIN",
                 "INPUT.CROP.CROP_INSTANCE", "INPUT.IS_ROTATE")
    groups = ("MODEL.FCOS.", "MODEL.BLENDMASK.", "MODEL.BASIS_MODULE.", "MODEL.TOP_MODULE.")
    family = [k for k in cfg.full_keys() if k in adelaidet or k.startswith(groups)]
    tensormask = [k for k in cfg.full_keys() if k.startswith("MODEL.TENSOR_MASK.")]
    embedmask = [k for k in cfg.full_keys() if k.startswith("MODEL.EMBEDMASK.")]
    assert len(flat(cfg)) == len(cfg.full_keys()) == 192 + 5 + 58 + 16 + 4
    assert (len(family), len(tensormask), len(embedmask)) == (58, 16, 4)
    assert cfg.TEST.BUCKETS == ()


def test_get_cfg_returns_independent_copies() -> None:
    a, b = get_cfg(), get_cfg()
    a.MODEL.ANCHOR_GENERATOR.SIZES.append([1])
    a.SOLVER.BASE_LR = 1.0
    assert b.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]] and b.SOLVER.BASE_LR == 0.001


def test_add_config_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.config, "_EXTENSIONS", [])  # the registry lives in jaxseg/config/config.py

    @add_config
    def add_tensormask(cfg: config.CfgNode) -> None:
        cfg.MODEL.TENSOR_MASK = config.CfgNode({"NUM_CONVS": 4, "MASK_LOSS_WEIGHT": 2.0})

    add_config(add_tensormask)  # a second registration is ignored
    assert config.config._EXTENSIONS == [add_tensormask]
    path = write(tmp_path / "tm.yaml", "MODEL:\n  TENSOR_MASK:\n    NUM_CONVS: 2\n")
    cfg = setup_cfg(path, ["MODEL.TENSOR_MASK.MASK_LOSS_WEIGHT", "1"])
    assert cfg.MODEL.TENSOR_MASK.NUM_CONVS == 2 and cfg.MODEL.TENSOR_MASK.MASK_LOSS_WEIGHT == 1.0


# -- files -----------------------------------------------------------------------------------------


def test_base_chain_overrides_in_order(tmp_path: Path) -> None:
    write(tmp_path / "a" / "root.yaml", "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\nSEED: 1\n")
    write(tmp_path / "a" / "b" / "mid.yaml", '_BASE_: "../root.yaml"\nSOLVER:\n  MAX_ITER: 20\n')
    leaf = write(tmp_path / "c" / "leaf.yaml", f'_BASE_: "{tmp_path}/a/b/mid.yaml"\nSEED: 3\n')
    cfg = setup_cfg(leaf, ["SEED", "4"])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SEED) == (0.1, 20, 4)


def test_empty_file_and_no_file_give_defaults(tmp_path: Path) -> None:
    assert flat(setup_cfg(write(tmp_path / "empty.yaml", ""), [])) == flat(get_cfg())
    assert flat(setup_cfg(None, [])) == flat(get_cfg())


def test_retinanet_eval_tag(tmp_path: Path) -> None:
    expr = "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"
    text = f'MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["{expr}"]\n'
    path = write(tmp_path / "r.yaml", text)
    sizes = setup_cfg(path, []).MODEL.ANCHOR_GENERATOR.SIZES
    assert len(sizes) == 5 and sizes[1][0] == 64 and sizes[0][1] == pytest.approx(32 * 2 ** (1 / 3))
    bad = write(tmp_path / "bad.yaml", "SEED: !!python/object/apply:eval [\"__import__('os').getpid()\"]\n")
    message = user_error(setup_cfg, bad, [])
    assert bad in message and "line 1" in message and "Call" in message


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = setup_cfg(str(R50_3X), ["SOLVER.WEIGHT_DECAY_BIAS", "0.0"])
    again = setup_cfg(write(tmp_path / "dumped.yaml", cfg.dump()), [])
    assert flat(again) == flat(cfg)


# -- overrides -------------------------------------------------------------------------------------


def test_overrides_of_each_type() -> None:
    cfg = setup_cfg(
        str(R50_3X),
        [
            "SOLVER.MAX_ITER", "100",
            "SOLVER.BASE_LR", "0.005",
            "SOLVER.WARMUP_FACTOR", "1",  # an int where a float is expected
            "SOLVER.STEPS", "[50, 80]",  # a list where a tuple is expected
            "MODEL.ANCHOR_GENERATOR.SIZES", "((16,), (32,))",  # nested containers follow the default
            "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "[[1, 1, 1, 1]]",
            "MODEL.MASK_ON", "False",
            "MODEL.WEIGHTS", "model_final_f10217.pkl",  # not a literal: kept as a string
            "OUTPUT_DIR", "/tmp/out dir",
            "SOLVER.WEIGHT_DECAY_BIAS", "0.0",  # default None takes any value
            "DATASETS.TEST", "('coco_2017_val', 'lvis_v1_val')",
            "MODEL.RPN", "{'NMS_THRESH': 0.6}",  # a group merged from a dict literal
        ],
    )  # fmt: skip
    assert cfg.SOLVER.MAX_ITER == 100 and cfg.SOLVER.BASE_LR == 0.005
    assert cfg.SOLVER.WARMUP_FACTOR == 1.0 and isinstance(cfg.SOLVER.WARMUP_FACTOR, float)
    assert cfg.SOLVER.STEPS == (50, 80)
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32]]
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS == ((1, 1, 1, 1),)
    assert cfg.MODEL.MASK_ON is False
    assert cfg.MODEL.WEIGHTS == "model_final_f10217.pkl" and cfg.OUTPUT_DIR == "/tmp/out dir"
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0
    assert cfg.DATASETS.TEST == ("coco_2017_val", "lvis_v1_val")
    assert cfg.MODEL.RPN.NMS_THRESH == 0.6 and cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 1000


def test_overrides_accept_python_values() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", 0.5, "MODEL.PIXEL_STD", (57.0, 57.0, 57.0)])
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.MODEL.PIXEL_STD == [57.0, 57.0, 57.0]


def test_cfg_is_frozen_after_setup() -> None:
    cfg = setup_cfg(str(R50_3X), [])
    assert cfg.is_frozen() and cfg.MODEL.RESNETS.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0
    with pytest.raises(AttributeError):
        cfg.merge_from_list(["SOLVER.BASE_LR", "1.0"])
    thawed = cfg.clone()
    thawed.defrost()
    thawed.merge_from_list(["SOLVER.BASE_LR", "1.0"])
    assert thawed.SOLVER.BASE_LR == 1.0 and cfg.SOLVER.BASE_LR == 0.02


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  ROI_HEAD:\n    NUM_CLASSES: 3\n")
    message = user_error(setup_cfg, path, [])
    assert message == (
        f"unknown config key MODEL.ROI_HEAD.NUM_CLASSES in {path}; did you mean MODEL.ROI_HEADS.NUM_CLASSES?"
    )


def test_unknown_key_in_base_names_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    child = write(tmp_path / "sub" / "child.yaml", '_BASE_: "../base.yaml"\nSEED: 1\n')
    message = user_error(setup_cfg, child, [])
    assert "SOLVER.BASE_LRR" in message and base in message and "did you mean SOLVER.BASE_LR?" in message


def test_unknown_key_on_command_line() -> None:
    message = user_error(setup_cfg, str(R50_3X), ["MODEL.RESNET.DEPTH", "101"])
    assert message == (
        "unknown config key MODEL.RESNET.DEPTH on the command line; did you mean MODEL.RESNETS.DEPTH?"
    )
    message = user_error(setup_cfg, None, ["SOLVER.LR", "0.1"])
    assert message.endswith("did you mean SOLVER.BASE_LR?")
    message = user_error(setup_cfg, None, ["ZZZ_QQQ", "1"])
    assert "unknown config key ZZZ_QQQ on the command line" in message and "did you mean" not in message


@pytest.mark.parametrize(
    ("yaml_text", "key", "value", "expected"),
    [
        ("SOLVER:\n  MAX_ITER: abc\n", "SOLVER.MAX_ITER", "'abc'", "an int"),
        ("SOLVER:\n  MAX_ITER: 1.5\n", "SOLVER.MAX_ITER", "1.5", "an int"),
        ("MODEL:\n  MASK_ON: 1\n", "MODEL.MASK_ON", "1", "a bool"),
        ("MODEL:\n  WEIGHTS: 3\n", "MODEL.WEIGHTS", "3", "a string"),
        ("SOLVER:\n  STEPS: 1000\n", "SOLVER.STEPS", "1000", "a tuple"),
        ("MODEL:\n  WEIGHTS:\n    X: 1\n", "MODEL.WEIGHTS", "{'X': 1}", "a string"),
    ],
)
def test_type_mismatch_in_file(tmp_path: Path, yaml_text: str, key: str, value: str, expected: str) -> None:
    path = write(tmp_path / "x.yaml", yaml_text)
    message = user_error(setup_cfg, path, [])
    assert f"bad value for config key {key} in {path}: {value}" in message
    assert f"expected {expected}" in message


def test_type_mismatch_on_command_line() -> None:
    message = user_error(setup_cfg, None, ["SOLVER.BASE_LR", "fast"])
    assert message == (
        "bad value for config key SOLVER.BASE_LR on the command line: 'fast' is a string, "
        "expected a float (default 0.001)"
    )
    message = user_error(setup_cfg, None, ["SOLVER.IMS_PER_BATCH", "[8"])
    assert "SOLVER.IMS_PER_BATCH on the command line: '[8'" in message


def test_value_given_to_a_group(tmp_path: Path) -> None:
    message = user_error(setup_cfg, None, ["MODEL.RPN", "3"])
    assert "MODEL.RPN on the command line is a group of keys" in message
    path = write(tmp_path / "x.yaml", "MODEL: 3\n")
    assert f"MODEL in {path} is a group of keys" in user_error(setup_cfg, path, [])


def test_odd_number_of_overrides() -> None:
    message = user_error(setup_cfg, str(R50_3X), ["SOLVER.BASE_LR", "0.1", "SOLVER.MAX_ITER"])
    assert "KEY VALUE pairs" in message and "'SOLVER.MAX_ITER' has no value" in message


def test_missing_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert user_error(setup_cfg, missing, []) == f"config file {missing} does not exist"
    child = write(tmp_path / "child.yaml", '_BASE_: "gone/base.yaml"\n')
    assert str(tmp_path / "gone" / "base.yaml") in user_error(setup_cfg, child, [])


def test_unreadable_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "MODEL:\n  MASK_ON: True\n  WEIGHTS: [unclosed\nSEED: 1\n")
    message = user_error(setup_cfg, path, [])
    assert message.startswith(f"cannot parse config file {path}: line ") and "line 4" in message


def test_other_file_errors(tmp_path: Path) -> None:
    listed = write(tmp_path / "list.yaml", "- SEED\n- 1\n")
    assert "must hold a mapping" in user_error(setup_cfg, listed, [])
    loop = write(tmp_path / "loop.yaml", '_BASE_: "loop.yaml"\n')
    assert f"config file {loop} includes itself" in user_error(setup_cfg, loop, [])
    old = write(tmp_path / "old.yaml", "VERSION: 1\n")
    assert f"config file {old} has VERSION 1" in user_error(setup_cfg, old, [])
    base_list = write(tmp_path / "bl.yaml", "_BASE_: [a.yaml]\n")
    assert f"_BASE_ in config file {base_list} must be a file path" in user_error(setup_cfg, base_list, [])


def test_errors_are_user_errors_exported_by_the_package() -> None:
    import jaxseg

    assert jaxseg.UserError is UserError

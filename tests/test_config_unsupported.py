"""Keys jaxseg does not implement are refused at setup; keys it reads its own way (SOLVER.STEPS beyond
MAX_ITER, FLOAT32_PRECISION, TEST.BUCKETS) behave as documented in docs/config_keys.md."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jaxseg import config
from jaxseg.config import add_config, get_cfg, register_unsupported, setup_cfg, unsupported
from jaxseg.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
R50_3X = CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"

# every row of the table, set to a value jaxseg does not implement (as typed on the command line)
REFUSED = {
    "MODEL.LOAD_PROPOSALS": "True",
    "MODEL.KEYPOINT_ON": "True",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": "[False, True, True, True]",
    "DATASETS.PROPOSAL_FILES_TRAIN": "('proposals_train.pkl',)",
    "DATASETS.PROPOSAL_FILES_TEST": "('proposals_val.pkl',)",
    "MODEL.RPN.BOUNDARY_THRESH": "0",
    "MODEL.RPN.CONV_DIMS": "[256, 256]",
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": "giou",
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": "False",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "giou",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT": "2.0",
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": "True",
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": "True",
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": "True",
    "INPUT.CROP.ENABLED": "True",
    "INPUT.MASK_FORMAT": "rle",
    "SOLVER.RESCALE_INTERVAL": "True",
    "SOLVER.REFERENCE_WORLD_SIZE": "8",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "1.0",
    "SOLVER.AMP.ENABLED": "True",
    "TEST.AUG.ENABLED": "True",
    "TEST.PRECISE_BN.ENABLED": "True",
    "TEST.EXPECTED_RESULTS": "[['bbox', 'AP', 38.5, 0.2]]",
    "VIS_PERIOD": "100",
    # AdelaiDet (FCOS, BlendMask)
    "MODEL.MOBILENET": "True",
    "MODEL.BACKBONE.ANTI_ALIAS": "True",
    "INPUT.IS_ROTATE": "True",
    "MODEL.FCOS.NORM": "SyncBN",
    "MODEL.FCOS.USE_DEFORMABLE": "True",
    "MODEL.FCOS.BOX_QUALITY": "iou",
    "MODEL.FCOS.LOSS_NORMALIZER_CLS": "moving_fg",
    "MODEL.FCOS.LOC_LOSS_TYPE": "smooth_l1",
    "MODEL.FCOS.YIELD_PROPOSAL": "True",
    "MODEL.FCOS.YIELD_BOX_FEATURES": "True",
    "MODEL.BASIS_MODULE.NAME": "Other",
    "MODEL.BASIS_MODULE.NORM": "GN",
    "MODEL.BLENDMASK.POOLER_TYPE": "ROIPool",
    "MODEL.BLENDMASK.TOP_INTERP": "bicubic",
    "MODEL.BLENDMASK.VISUALIZE": "True",
    "MODEL.BLENDMASK.POOLER_SCALES": "(0.125,)",
    # EmbedMask (jaxseg's key)
    "MODEL.EMBEDMASK.PROPOSAL_FROM": "best",
}


def user_error(fn, *args) -> str:
    """Call fn(*args), expect a UserError, and return its message."""
    with pytest.raises(UserError) as info:
        fn(*args)
    return str(info.value)


# -- the table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), sorted(REFUSED.items()))
def test_unimplemented_value_is_refused(key: str, value: str) -> None:
    message = user_error(setup_cfg, str(R50_3X), [key, value])
    merged = get_cfg()
    merged.merge_from_list([key, value])  # the value as the config holds it
    given = unsupported._lookup(merged, key)[1]
    assert message.startswith(f"config key {key} {given!r} is not implemented by jaxseg (supported: ")
    assert "\n" not in message and "also unsupported" not in message


def test_message_names_key_value_and_supported_values() -> None:
    message = user_error(setup_cfg, None, ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"])
    assert message == (
        "config key MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE 'giou' is not implemented by jaxseg (supported: 'smooth_l1')"
    )
    message = user_error(setup_cfg, None, ["SOLVER.AMP.ENABLED", "True"])
    assert message.startswith("config key SOLVER.AMP.ENABLED True is not implemented by jaxseg (supported: False)")
    assert "not implemented yet" in message and "float32" in message


def test_every_row_is_tested_and_holds_the_detectron2_default() -> None:
    assert set(unsupported._TABLE) == set(REFUSED)
    defaults = get_cfg()
    for key in REFUSED:
        value = defaults
        for part in key.split("."):
            value = value[part]
        assert unsupported._canonical(value) in map(unsupported._canonical, unsupported.supported_values(key)), key


def test_refused_in_a_file_too(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("MODEL:\n  RPN:\n    CONV_DIMS: [256, 256]\n")
    assert user_error(setup_cfg, str(path), []).startswith("config key MODEL.RPN.CONV_DIMS [256, 256] ")


def test_several_refused_keys_are_all_named() -> None:
    message = user_error(setup_cfg, None, ["TEST.AUG.ENABLED", "True", "MODEL.KEYPOINT_ON", "True", "VIS_PERIOD", "5"])
    assert message.startswith("config key MODEL.KEYPOINT_ON True is not implemented")
    assert message.endswith("(also unsupported: TEST.AUG.ENABLED, VIS_PERIOD)") and "\n" not in message


def test_defaults_and_supported_values_pass() -> None:
    assert setup_cfg(None, []).is_frozen()
    cfg = setup_cfg(str(R50_3X), [
        "MODEL.RPN.CONV_DIMS", "(-1,)",  # a tuple where the default is a list
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "(False, False, False, False)",
        "SOLVER.CLIP_GRADIENTS.NORM_TYPE", "2",  # an int where a float is expected
        "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "20",  # inert while USE_FED_LOSS is False: accepted
        "CUDNN_BENCHMARK", "True", "MODEL.DEVICE", "cpu",  # harmless for jaxseg: accepted
    ])  # fmt: skip
    assert cfg.MODEL.RPN.CONV_DIMS == [-1] and cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_pass(path: Path) -> None:
    unsupported.check_supported(setup_cfg(str(path), []))


def test_a_family_registers_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unsupported, "_TABLE", dict(unsupported._TABLE))
    monkeypatch.setattr(config.config, "_EXTENSIONS", [])
    register_unsupported("MODEL.TOYFAM.LOSS_TYPE", ["focal", "sigmoid_focal"], "only focal losses")
    setup_cfg(None, [])  # the family's keys are not in the tree: its rows are not checked

    @add_config
    def add_toyfam(cfg: config.CfgNode) -> None:
        cfg.MODEL.TOYFAM = config.CfgNode({"LOSS_TYPE": "focal", "NUM_CONVS": 4})

    assert setup_cfg(None, ["MODEL.TOYFAM.LOSS_TYPE", "sigmoid_focal"]).MODEL.TOYFAM.LOSS_TYPE == "sigmoid_focal"
    message = user_error(setup_cfg, None, ["MODEL.TOYFAM.LOSS_TYPE", "dice"])
    assert message == (
        "config key MODEL.TOYFAM.LOSS_TYPE 'dice' is not implemented by jaxseg (supported: 'focal', 'sigmoid_focal'); "
        "only focal losses"
    )
    register_unsupported("MODEL.TOYFAM.LOSS_TYPE", ["focal", "sigmoid_focal", "dice"])  # a row is replaced
    assert setup_cfg(None, ["MODEL.TOYFAM.LOSS_TYPE", "dice"]).MODEL.TOYFAM.LOSS_TYPE == "dice"


def test_register_unsupported_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        register_unsupported("MODEL.X", "focal")
    with pytest.raises(ValueError):
        register_unsupported("MODEL.X", [])
    assert unsupported.supported_values("MODEL.X") is None


# -- FLOAT32_PRECISION -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "highest", "high", "medium", "HIGH"])
def test_float32_precision_accepted(value: str) -> None:
    assert setup_cfg(None, ["FLOAT32_PRECISION", value]).FLOAT32_PRECISION == value


def test_float32_precision_refused_at_setup() -> None:
    message = user_error(setup_cfg, None, ["FLOAT32_PRECISION", "fast"])
    assert message.startswith("config key FLOAT32_PRECISION 'fast' is not implemented by jaxseg (supported: '', ")
    assert "'medium'" in message


def test_float32_precision_values_match_the_model() -> None:
    from jaxseg.models.meta_arch import PRECISIONS

    assert set(unsupported.FLOAT32_PRECISIONS) == set(PRECISIONS)


# -- TEST.BUCKETS ------------------------------------------------------------------------------------


def test_buckets_default_and_override() -> None:
    assert get_cfg().TEST.BUCKETS == ()
    cfg = setup_cfg(str(R50_3X), ["TEST.BUCKETS", "((800, 1344), (1344, 800))"])
    assert cfg.TEST.BUCKETS == ((800, 1344), (1344, 800))


def test_buckets_from_a_file_reach_the_input_spec(tmp_path: Path) -> None:
    from jaxseg.data.input_spec import InputSpec

    path = tmp_path / "b.yaml"
    path.write_text(f'_BASE_: "{R50_3X}"\nTEST:\n  BUCKETS: [[800, 1344], [1344, 800], [512, 512]]\n')
    spec = InputSpec.from_config(setup_cfg(str(path), []), 32)
    assert spec.buckets == ((800, 1344), (1344, 800), (512, 512))
    assert spec.padded_size(500, 333) == (512, 512)  # the smallest bucket that holds it
    assert spec.padded_size(700, 1000) == (800, 1344)
    assert spec.padded_size(900, 1400) == (928, 1408)  # no bucket holds it: the size divisibility


@pytest.mark.parametrize("value", ["(800, 1344)", "((800, 1344, 3),)", "((800, 0),)", "((800.0, 1344),)"])
def test_bad_buckets_are_refused_at_setup(value: str) -> None:
    message = user_error(setup_cfg, None, ["TEST.BUCKETS", value])
    assert message.startswith("config key TEST.BUCKETS ") and "(height, width) pairs of positive ints" in message


# -- SOLVER.STEPS beyond SOLVER.MAX_ITER ---------------------------------------------------------------


def test_steps_beyond_max_iter_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from jaxseg.engine.optim import lr_schedule

    cfg = setup_cfg(None, ["SOLVER.BASE_LR", "0.1", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(50, 200, 300)",
                           "SOLVER.MAX_ITER", "100"])
    with caplog.at_level(logging.WARNING, logger="jaxseg.engine.optim"):
        lr = lr_schedule(cfg)
    assert "SOLVER.STEPS [200, 300]" in caplog.text and "SOLVER.MAX_ITER 100" in caplog.text
    assert [float(lr(s)) for s in (0, 49, 50, 99, 100)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01])


def test_zoo_config_with_short_max_iter_runs(caplog: pytest.LogCaptureFixture) -> None:
    from jaxseg.engine.optim import lr_schedule

    cfg = setup_cfg(str(R50_3X), ["SOLVER.MAX_ITER", "100"])
    with caplog.at_level(logging.WARNING, logger="jaxseg.engine.optim"):
        lr = lr_schedule(cfg)
    assert "[210000, 250000]" in caplog.text
    # warmup (1000 iterations from 0.02 * 0.001) with no decay left
    assert float(lr(0)) == pytest.approx(0.02 * 0.001) and float(lr(99)) < 0.02

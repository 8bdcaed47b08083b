"""The detectron2 -> Flax key map: mechanical renames, layouts, and the one-error report."""

import logging

import jax
import numpy as np
import pytest

from jaxseg.checkpoint.adapters import convert_state_dict
from jaxseg.checkpoint.detectron2 import DETECTRON2, d2_name_to_path, path_to_d2_name
from jaxseg.errors import UserError


@pytest.mark.parametrize("name, path", [
    ("backbone.bottom_up.res2.0.conv1.weight", ("params", "backbone", "bottom_up", "res2_0", "conv1", "kernel")),
    ("backbone.bottom_up.res2.0.conv1.norm.running_var",
     ("batch_stats", "backbone", "bottom_up", "res2_0", "conv1", "norm", "running_var")),
    ("backbone.bottom_up.stem.conv1.norm.weight", ("batch_stats", "backbone", "bottom_up", "stem", "conv1", "norm",
                                                    "weight")),
    ("backbone.fpn_lateral2.bias", ("params", "backbone", "fpn_lateral2", "bias")),
    ("roi_heads.box_head.fc1.weight", ("params", "roi_heads", "box_head", "fc1", "kernel")),
    ("head.cls_subnet.0.weight", ("params", "head", "cls_subnet_0", "kernel")),
])
def test_names_round_trip(name, path):
    assert d2_name_to_path(name) == path
    assert path_to_d2_name(path) == name


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, np.float32)


TARGET = {
    "params": {"a": {"conv": {"kernel": _sds(3, 3, 4, 8)}, "fc": {"kernel": _sds(5, 6), "bias": _sds(6)}},
               "roi_heads": {"box_predictor": {"cls_score": {"kernel": _sds(5, 4), "bias": _sds(4)}}}},
    "batch_stats": {"a": {"conv": {"norm": {k: _sds(8) for k in ("weight", "bias", "running_mean", "running_var")}}}},
}


def _state_dict(num_cls=4):
    rng = np.random.default_rng(0)
    sd = {"a.conv.weight": rng.normal(size=(8, 4, 3, 3)), "a.fc.weight": rng.normal(size=(6, 5)),
          "a.fc.bias": rng.normal(size=6), "roi_heads.box_predictor.cls_score.weight": rng.normal(size=(num_cls, 5)),
          "roi_heads.box_predictor.cls_score.bias": rng.normal(size=num_cls),
          "pixel_mean": np.zeros(3), "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4))}
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[f"a.conv.norm.{k}"] = rng.normal(size=8)
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def test_layouts_and_every_tensor_used():
    sd = _state_dict()
    out = convert_state_dict(sd, TARGET, DETECTRON2, source="t.pkl")
    np.testing.assert_array_equal(out["params"]["a"]["conv"]["kernel"], sd["a.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(out["params"]["a"]["fc"]["kernel"], sd["a.fc.weight"].T)
    np.testing.assert_array_equal(out["batch_stats"]["a"]["conv"]["norm"]["running_var"], sd["a.conv.norm.running_var"])


def test_one_error_lists_missing_unexpected_and_misshaped():
    sd = _state_dict()
    del sd["a.fc.bias"]
    sd["a.extra.weight"] = np.zeros((2, 2), np.float32)
    sd["a.conv.weight"] = np.zeros((8, 4, 1, 1), np.float32)
    with pytest.raises(UserError) as e:
        convert_state_dict(sd, TARGET, DETECTRON2, source="ckpt.pth")
    msg = str(e.value)
    for needle in ("ckpt.pth", "missing: a.fc.bias", "unexpected: a.extra.weight", "a.conv.weight"):
        assert needle in msg


def test_num_classes_mismatch_reinitialises_predictor_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        out = convert_state_dict(_state_dict(num_cls=81), TARGET, DETECTRON2, source="t.pkl",
                                 reinit_class_dependent=True)
    assert out["params"]["roi_heads"]["box_predictor"]["cls_score"]["kernel"].shape == (5, 4)
    assert not out["params"]["roi_heads"]["box_predictor"]["cls_score"]["bias"].any()
    assert "re-initialising" in caplog.text and "cls_score" in caplog.text

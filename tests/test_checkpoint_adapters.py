"""Checkpoint adapters: a family's rename rules, the registry, class-count mismatches, detectron2:// names."""

import logging
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jaxseg.checkpoint.adapters import CheckpointAdapter, convert_state_dict, get_adapter, register_adapter
from jaxseg.checkpoint.catalog import resolve_weights_path
from jaxseg.checkpoint.detectron2 import path_to_d2_name
from jaxseg.checkpoint.loading import abstract_variables, load_weights
from jaxseg.config import setup_cfg
from jaxseg.errors import UserError
from jaxseg.models.registry import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")


# ----------------------------------------------------------------------------------------------------
# a toy family: "enc.fc.weight" (out, in) -> params/enc/fc/kernel (in, out)
# ----------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(8, name="fc")(x))


class Toy(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes, name="head")(Encoder(name="enc")(x))


def _toy_path(name: str) -> tuple[str, ...]:
    *modules, leaf = name.split(".")
    return ("params", *modules, {"weight": "kernel"}.get(leaf, leaf))


def _toy_name(path: tuple[str, ...]) -> str:
    _, *modules, leaf = path
    return ".".join([*modules, {"kernel": "weight"}.get(leaf, leaf)])


def _toy_layout(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    return value.T if path[-1] == "kernel" else value


TOY = register_adapter(CheckpointAdapter(
    name="toy-test", to_path=_toy_path, to_name=_toy_name, to_layout=_toy_layout, ignored=(r"^version$",),
    class_dependent=r"^head\.", classes_in=lambda name, shape: shape[0], num_classes_key="TOY.NUM_CLASSES"))


def _toy_target(num_classes: int = 3) -> dict:
    return jax.eval_shape(Toy(num_classes).init, jax.random.PRNGKey(0), jnp.zeros((1, 5)))


def _toy_state_dict(num_classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"enc.fc.weight": (8, 5), "enc.fc.bias": (8,), "head.weight": (num_classes, 8),
              "head.bias": (num_classes,)}
    sd = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    sd["version"] = np.zeros((), np.float32)
    return sd


def test_toy_adapter_converts_a_state_dict():
    sd = _toy_state_dict()
    out = convert_state_dict(sd, _toy_target(), "toy-test", source="toy.pth")
    np.testing.assert_array_equal(out["params"]["enc"]["fc"]["kernel"], sd["enc.fc.weight"].T)
    np.testing.assert_array_equal(out["params"]["head"]["bias"], sd["head.bias"])
    assert get_adapter("toy-test") is TOY
    y = Toy().apply(out, jnp.ones((1, 5)))  # the converted tree is the module's
    assert y.shape == (1, 3)


def test_toy_adapter_reports_missing_and_unexpected():
    sd = _toy_state_dict()
    del sd["enc.fc.bias"]
    sd["enc.extra.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(UserError, match=r"toy\.pth.*missing: enc\.fc\.bias.*unexpected: enc\.extra\.weight"):
        convert_state_dict(sd, _toy_target(), TOY, source="toy.pth")


def test_toy_class_mismatch_error_or_reinit(caplog):
    with pytest.raises(UserError, match=r"toy\.pth has 5 classes in head but the config's model has 3 "
                                         r"\(TOY\.NUM_CLASSES\)"):
        convert_state_dict(_toy_state_dict(5), _toy_target(3), TOY, source="toy.pth", num_classes=3)
    with caplog.at_level(logging.WARNING):
        out = convert_state_dict(_toy_state_dict(5), _toy_target(3), TOY, source="toy.pth", num_classes=3,
                                 reinit_class_dependent=True)
    assert out["params"]["head"]["kernel"].shape == (8, 3) and not out["params"]["head"]["bias"].any()
    assert "re-initialising head" in caplog.text


def test_unknown_adapter_is_a_user_error():
    with pytest.raises(UserError, match=r"'no-such-family'.*known:.*detectron2"):
        get_adapter("no-such-family")


def test_registering_another_adapter_under_a_taken_name_fails():
    register_adapter(TOY)  # the same one again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(CheckpointAdapter(name="toy-test", to_path=_toy_path, to_name=_toy_name))


# ----------------------------------------------------------------------------------------------------
# load_weights with the quickstart model (ResNet-18 FPN Mask R-CNN, 6 classes)
# ----------------------------------------------------------------------------------------------------


def _model(num_classes: int = 6, weights: str = ""):
    cfg = setup_cfg(QUICKSTART, ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.WEIGHTS", weights])
    return cfg, build_model(cfg)


def _torch_layout_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[0] == "params" and path[-1] == "kernel":
        if len(shape) == 4:
            return (shape[3], shape[2], shape[0], shape[1])
        if len(shape) == 2:
            return (shape[1], shape[0])
    return tuple(shape)


def _d2_state_dict(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors under detectron2 names, in PyTorch layout, for every variable of `model`."""
    rng = np.random.default_rng(seed)
    return {path_to_d2_name(p): rng.normal(size=_torch_layout_shape(p, v.shape)).astype(np.float32)
            for p, v in flatten_dict(abstract_variables(model)).items()}


def _write_pkl(path, state_dict: dict, author: str | None = "test") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"model": state_dict, "__author__": author} if author else state_dict
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return str(path)


@pytest.fixture(scope="module")
def models():
    return {"6": _model(6), "80": _model(80)}


@pytest.fixture(scope="module")
def coco_weights(models, tmp_path_factory):
    """A detectron2-format model_final.pkl of the quickstart architecture with 80 classes."""
    path = tmp_path_factory.mktemp("w") / "model_final.pkl"
    return _write_pkl(path, _d2_state_dict(models["80"][1]))


def test_class_count_mismatch_at_inference_is_a_user_error(models, coco_weights):
    cfg, model = models["6"]
    with pytest.raises(UserError) as e:
        load_weights(cfg, coco_weights, model=model)
    msg = str(e.value)
    assert "model_final.pkl has 80 classes in " in msg
    assert "but the config's model has 6 (MODEL.ROI_HEADS.NUM_CLASSES)" in msg
    head = msg.split(" but ")[0]
    for layer in ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                  "roi_heads.mask_head.predictor"):
        assert layer in head


def test_class_count_mismatch_at_training_init_reinitialises(models, coco_weights, caplog):
    cfg, model = models["6"]
    initial = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), abstract_variables(model))
    with caplog.at_level(logging.WARNING):
        out = load_weights(cfg, coco_weights, model=model, initial=initial)
    assert "re-initialising" in caplog.text and "roi_heads.box_predictor.cls_score" in caplog.text
    cls = out["params"]["roi_heads"]["box_predictor"]["cls_score"]
    assert cls["kernel"].shape[-1] == 7 and not cls["bias"].any()
    assert np.abs(cls["kernel"]).max() < 0.1  # N(0, 0.01), not the checkpoint's N(0, 1) nor the initial 7
    sd = pickle.load(open(coco_weights, "rb"))["model"]
    np.testing.assert_array_equal(out["params"]["backbone"]["fpn_lateral2"]["bias"], sd["backbone.fpn_lateral2.bias"])


# ----------------------------------------------------------------------------------------------------
# detectron2:// names
# ----------------------------------------------------------------------------------------------------


def test_detectron2_name_loads_from_jaxseg_weights(models, tmp_path, monkeypatch):
    _, model = models["6"]
    monkeypatch.setenv("JAXSEG_WEIGHTS", str(tmp_path / "zoo"))
    sd = _d2_state_dict(model, seed=3)
    _write_pkl(tmp_path / "zoo" / "Misc" / "shapes" / "model_final.pkl", sd)
    cfg, _ = _model(6, "detectron2://Misc/shapes/model_final.pkl")
    out = load_weights(cfg, model=model)
    np.testing.assert_array_equal(out["params"]["roi_heads"]["box_predictor"]["cls_score"]["bias"],
                                  sd["roi_heads.box_predictor.cls_score.bias"])


def test_detectron2_imagenet_init_through_heuristics(models, tmp_path, monkeypatch):
    """The zoo configs' MODEL.WEIGHTS: a Caffe2-style backbone .pkl (no detectron2 prefix, an ImageNet
    classifier) fills the backbone at training init by the matching heuristics; the rest keeps its init."""
    _, model = models["6"]
    monkeypatch.setenv("JAXSEG_WEIGHTS", str(tmp_path))
    prefix = "backbone.bottom_up."
    blobs = {k[len(prefix):]: v for k, v in _d2_state_dict(model, seed=4).items() if k.startswith(prefix)}
    blobs["fc1000.weight"] = np.zeros((1000, 512), np.float32)
    _write_pkl(tmp_path / "ImageNetPretrained" / "MSRA" / "R-18.pkl", blobs, author=None)
    cfg, _ = _model(6, "detectron2://ImageNetPretrained/MSRA/R-18.pkl")
    initial = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract_variables(model))
    out = load_weights(cfg, cfg.MODEL.WEIGHTS, model=model, initial=initial)
    np.testing.assert_array_equal(out["params"]["backbone"]["bottom_up"]["res2_0"]["conv1"]["kernel"],
                                  blobs["res2.0.conv1.weight"].transpose(2, 3, 1, 0))
    assert not out["params"]["backbone"]["fpn_lateral2"]["bias"].any()


def test_detectron2_name_not_there_says_where_and_from_where(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEG_WEIGHTS", str(tmp_path / "zoo"))
    name = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    expected = str(tmp_path / "zoo" / "ImageNetPretrained" / "MSRA" / "R-50.pkl")
    for call in (lambda: resolve_weights_path(name), lambda: load_weights(_model(6, name)[0])):
        with pytest.raises(UserError) as e:
            call()
        assert expected in str(e.value)
        assert "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl" in str(e.value)


def test_detectron2_name_default_directory_and_query(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXSEG_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    local = tmp_path / ".cache" / "jaxseg" / "weights" / "a" / "b.pth"
    with pytest.raises(UserError, match=str(local)):
        resolve_weights_path("detectron2://a/b.pth")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"")
    assert resolve_weights_path("detectron2://a/b.pth") == str(local)
    assert resolve_weights_path("detectron2://a/b.pth?matching_heuristics=True") == \
        f"{local}?matching_heuristics=True"
    assert resolve_weights_path("model_final.pkl") == "model_final.pkl"


@pytest.mark.parametrize("url", ["https://example.com/model_final.pkl", "http://x/y.pth", "s3://bucket/k.pkl"])
def test_other_urls_refused(url):
    with pytest.raises(UserError, match="does not download"):
        resolve_weights_path(url)


def test_detectron2_name_cannot_leave_the_directory():
    with pytest.raises(UserError, match="expected detectron2://"):
        resolve_weights_path("detectron2://../../etc/passwd")

"""Bad input through the CLI: one line naming the problem, exit code 2, no traceback, nothing half-written."""

import os
import pickle

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_module
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_3x.yaml")


def run(*args):
    return run_module(*args)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


def predict(tmp_path, image, *opts):
    return run("jaxseg.main", "--config", CONFIG, "--predict", image, "--output", str(tmp_path / "out"), *opts)


def test_missing_weights_file(tmp_path, image):
    res = predict(tmp_path, image, "MODEL.WEIGHTS", str(tmp_path / "nope.pkl"))
    assert_user_error(res, "nope.pkl")
    assert not (tmp_path / "out").exists()


def test_truncated_pkl(tmp_path, image, d2_maskrcnn_weights):
    data = open(d2_maskrcnn_weights, "rb").read()
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(data[: len(data) // 2])
    res = predict(tmp_path, image, "MODEL.WEIGHTS", str(bad))
    assert_user_error(res, "truncated.pkl")
    assert not (tmp_path / "out").exists()


def test_pth_of_another_architecture(tmp_path, image):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    res = predict(tmp_path, image, "MODEL.WEIGHTS", str(path))
    assert_user_error(res, "resnet18.pth", "missing", "unexpected")
    assert not (tmp_path / "out").exists()


def test_text_file_named_jpg(tmp_path, d2_maskrcnn_weights):
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not an image\n")
    res = predict(tmp_path, str(fake), "MODEL.WEIGHTS", d2_maskrcnn_weights)
    assert_user_error(res, "photo.jpg")
    assert not (tmp_path / "out").exists()


def test_missing_image(tmp_path, d2_maskrcnn_weights):
    res = predict(tmp_path, str(tmp_path / "missing.jpg"), "MODEL.WEIGHTS", d2_maskrcnn_weights)
    assert_user_error(res, "missing.jpg")


def test_unknown_config_key(tmp_path, image):
    res = predict(tmp_path, image, "MODEL.ROI_HEAD.NUM_CLASSES", "3")
    assert_user_error(res, "MODEL.ROI_HEAD.NUM_CLASSES", "MODEL.ROI_HEADS.NUM_CLASSES")


def test_bad_override_value(tmp_path, image):
    res = predict(tmp_path, image, "MODEL.ROI_HEADS.NUM_CLASSES", "many")
    assert_user_error(res, "MODEL.ROI_HEADS.NUM_CLASSES", "many")


def test_missing_config_file(tmp_path, image):
    res = run("jaxseg.main", "--config", str(tmp_path / "nope.yaml"), "--predict", image, "--output",
              str(tmp_path / "out"))
    assert_user_error(res, "nope.yaml")


def test_convert_rejects_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"model": {"foo.weight": np.zeros((3, 3), np.float32)}, "__author__": "x"}))
    res = run("jaxseg.convert", str(bad), str(tmp_path / "conv"), "--config", CONFIG)
    assert_user_error(res, "bad.pkl", "foo.weight")
    assert not (tmp_path / "conv").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]

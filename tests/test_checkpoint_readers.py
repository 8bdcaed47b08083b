"""Checkpoint readers: torch files (zip and legacy) read without torch, .pkl rules, Caffe2 names, security."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from jaxseg.checkpoint.c2_names import align_to_model_keys, convert_c2_names, rename_c2_key
from jaxseg.checkpoint.readers import read_checkpoint, read_pickle, read_torch_file
from jaxseg.errors import UserError

FORMATS = {"zip": True, "legacy": False}


def _state_dict() -> dict[str, torch.Tensor]:
    """Tensors of several dtypes and layouts, including views that share a storage."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, generator=gen)
    return collections.OrderedDict(
        f32=torch.randn(2, 3, 4, 5, generator=gen),
        f16=torch.randn(7, generator=gen).half(),
        bf16=torch.randn(3, 2, generator=gen).bfloat16(),
        f64=torch.randn(2, 2, generator=gen).double(),
        i64=torch.arange(-3, 9),
        i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
        u8=torch.arange(250, 256, dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        transposed=torch.randn(3, 5, generator=gen).t(),
        offset_view=base[7:19].view(3, 4),
        strided=base[1::3],
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 4),
        param=torch.nn.Parameter(torch.randn(4, generator=gen)),
        num_batches_tracked=torch.tensor(17),
    )


def _expected(tensor: torch.Tensor) -> np.ndarray:
    """torch's own values, as numpy (bfloat16 compared through float32)."""
    tensor = tensor.detach()
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def _assert_same(arrays: dict[str, np.ndarray], tensors: dict[str, torch.Tensor]) -> None:
    assert list(arrays) == list(tensors)
    for name, tensor in tensors.items():
        got = arrays[name]
        assert isinstance(got, np.ndarray), name
        assert got.shape == tuple(tensor.shape), name
        assert got.flags.c_contiguous and got.flags.writeable, name
        if tensor.dtype == torch.bfloat16:
            assert got.dtype.name == "bfloat16"
            got = got.astype(np.float32)
        else:
            assert got.dtype == _expected(tensor).dtype, name
        np.testing.assert_array_equal(got, _expected(tensor), err_msg=name)


def _save(obj, path, fmt: str) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return str(path)


# ----------------------------------------------------------------------------------------------------
# torch files
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_matches_torch(tmp_path, fmt):
    sd = _state_dict()
    path = _save(sd, tmp_path / "weights.pth", fmt)
    _assert_same(read_torch_file(path), sd)
    loaded = read_checkpoint(path)
    assert loaded["__author__"] is None and loaded["matching_heuristics"] is False
    _assert_same(loaded["model"], sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_with_model_key_and_extras(tmp_path, fmt):
    sd = _state_dict()
    opt = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    path = _save({"model": sd, "iteration": 5, "optimizer": opt}, tmp_path / "model_final.pt", fmt)
    raw = read_torch_file(path)
    assert raw["iteration"] == 5 and raw["optimizer"]["param_groups"][0]["lr"] == 0.1
    np.testing.assert_array_equal(raw["optimizer"]["state"][0]["momentum_buffer"], np.ones(3, np.float32))
    _assert_same(read_checkpoint(path)["model"], sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_prefix_stripped(tmp_path, fmt):
    sd = _state_dict()
    path = _save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth", fmt)
    _assert_same(read_checkpoint(path)["model"], sd)


def test_module_prefix_kept_unless_on_every_key(tmp_path):
    sd = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    path = _save(sd, tmp_path / "mixed.pth", "zip")
    assert list(read_checkpoint(path)["model"]) == ["module.a", "b"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_dtypes_through_untyped_storage(tmp_path, fmt):
    sd = {"u16": torch.arange(65530, 65536, dtype=torch.int32).to(torch.uint16),
          "f8": torch.linspace(-2, 2, 9).to(torch.float8_e4m3fn)}  # fmt: skip
    got = read_torch_file(_save(sd, tmp_path / "new.pth", fmt))
    np.testing.assert_array_equal(got["u16"], np.arange(65530, 65536).astype(np.uint16))
    assert got["f8"].dtype.name == "float8_e4m3fn"
    np.testing.assert_array_equal(got["f8"].astype(np.float32), sd["f8"].float().numpy())


def test_big_endian_zip(tmp_path):
    values = torch.randn(6)
    little = _save({"a": values}, tmp_path / "little.pth", "zip")
    big = str(tmp_path / "big.pth")
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif name.endswith("/data/0"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(name, data)
    np.testing.assert_array_equal(read_torch_file(big)["a"], values.numpy())


def test_pycls_pyth(tmp_path):
    sd = {"stem.conv.weight": torch.ones(2, 3), "stem.bn.num_batches_tracked": torch.tensor(3)}
    path = _save({"model_state": sd, "epoch": 4}, tmp_path / "net.pyth", "zip")
    loaded = read_checkpoint(path)
    assert list(loaded["model"]) == ["stem.conv.weight"]
    assert loaded["__author__"] == "pycls" and loaded["matching_heuristics"] is True


def test_matching_heuristics_query(tmp_path):
    path = _save({"a": torch.ones(1)}, tmp_path / "w.pth", "zip")
    assert read_checkpoint(path + "?matching_heuristics=True")["matching_heuristics"] is True
    assert read_checkpoint(path)["matching_heuristics"] is False


def test_library_never_imports_torch(tmp_path):
    path = _save(_state_dict(), tmp_path / "w.pth", "zip")
    legacy = _save(_state_dict(), tmp_path / "w_legacy.pth", "legacy")
    code = (
        "import sys\nfrom jaxseg.checkpoint.readers import read_checkpoint\n"
        f"assert len(read_checkpoint({path!r})['model']) == len(read_checkpoint({legacy!r})['model'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# ----------------------------------------------------------------------------------------------------
# .pkl files
# ----------------------------------------------------------------------------------------------------


def _numpy_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"backbone.bottom_up.stem.conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
            "roi_heads.box_predictor.cls_score.bias": rng.standard_normal(81).astype(np.float32),
            "step": np.arange(3, dtype=np.int64)}  # fmt: skip


def _dump(obj, path, protocol: int = 2) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_d2_pkl_as_is(tmp_path, protocol):
    state = _numpy_state()
    path = _dump(
        {"model": state, "__author__": "Detectron2 Model Zoo"}, tmp_path / "model_final.pkl", protocol
    )
    loaded = read_checkpoint(path)
    assert loaded["__author__"] == "Detectron2 Model Zoo" and loaded["matching_heuristics"] is False
    assert list(loaded["model"]) == list(state)
    for name, value in state.items():
        assert loaded["model"][name].dtype == value.dtype
        np.testing.assert_array_equal(loaded["model"][name], value)


def test_d2_pkl_keeps_matching_heuristics_flag(tmp_path):
    data = {"model": _numpy_state(), "__author__": "torchvision", "matching_heuristics": True}
    assert read_checkpoint(_dump(data, tmp_path / "tv.pkl"))["matching_heuristics"] is True


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_numpy_1_and_2_module_names(tmp_path, core):
    raw = pickle.dumps({"model": _numpy_state(), "__author__": "x"}, protocol=2)
    for other in (b"numpy._core.", b"numpy.core."):
        raw = raw.replace(other, core.encode() + b".")
    assert core.encode() + b".multiarray" in raw
    path = tmp_path / "np.pkl"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_checkpoint(str(path))["model"]["step"], np.arange(3))


def _py2_pickle(blobs: dict[str, np.ndarray]) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: str as BINSTRING, arrays through numpy.core."""

    def string(text: bytes) -> bytes:
        if len(text) < 256:
            return b"U" + bytes([len(text)]) + text
        return b"T" + struct.pack("<i", len(text)) + text

    out = [b"\x80\x02}(", string(b"blobs"), b"}("]
    for name, value in blobs.items():
        shape = b"".join(b"J" + struct.pack("<i", n) for n in value.shape)
        array_head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b")
        dtype = b"cnumpy\ndtype\n" + string(value.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
        dtype_state = b"(K\x03" + string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        state = b"(K\x01(" + shape + b"t" + dtype + dtype_state + b"\x89" + string(value.tobytes()) + b"tb"
        out += [string(name.encode()), array_head, b"\x87R", state]
    out += [b"u", string(b"cfg"), string(b"MODEL: {}"), b"u."]
    return b"".join(out)


def test_python2_caffe2_pkl_latin1(tmp_path):
    weights = np.random.default_rng(1).standard_normal((8, 3, 1, 1)).astype(np.float32)
    assert max(weights.tobytes()) > 127  # bytes that only latin1 decoding gets right
    path = tmp_path / "R-50.pkl"
    path.write_bytes(_py2_pickle({"res2_0_branch2a_w": weights, "res2_0_branch2a_w_momentum": weights}))
    loaded = read_checkpoint(str(path))
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
    assert list(loaded["model"]) == ["res2.0.conv1.weight"]
    np.testing.assert_array_equal(loaded["model"]["res2.0.conv1.weight"], weights)


def test_pkl_holding_torch_tensors(tmp_path):
    sd = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    path = _dump({"model": sd, "__author__": "someone"}, tmp_path / "tensors.pkl")
    _assert_same(read_checkpoint(path)["model"], sd)


C2_BLOBS = {
    "conv1_w": (4, 3, 7, 7),
    "res_conv1_bn_s": (64,),
    "res_conv1_bn_b": (64,),
    "res2_0_branch2a_w": (4, 4, 1, 1),
    "res2_0_branch2a_bn_s": (64,),
    "res2_0_branch2a_bn_b": (64,),
    "res2_0_branch2a_bn_running_mean": (64,),
    "res2_0_branch2a_bn_riv": (64,),
    "res3_0_branch1_bn_b": (512,),
    "res2_2_branch2c_w": (8, 4, 1, 1),
    "fpn_inner_res5_2_sum_w": (8, 16, 1, 1),
    "fpn_inner_res4_5_sum_lateral_b": (256,),
    "fpn_res3_3_sum_w": (8, 8, 3, 3),
    "conv_rpn_fpn2_w": (8, 8, 3, 3),
    "rpn_cls_logits_fpn2_b": (3,),
    "rpn_bbox_pred_fpn2_w": (12, 8, 1, 1),
    "fc6_w": (32, 392),
    "fc7_b": (1024,),
    "cls_score_w": (81, 32),
    "cls_score_b": (81,),
    "bbox_pred_w": (324, 32),
    "bbox_pred_b": (324,),
    "_[mask]_fcn1_w": (8, 8, 3, 3),
    "conv5_mask_b": (256,),
    "mask_fcn_logits_w": (81, 8, 1, 1),
    "kps_score_lowres_w": (8, 17, 4, 4),
    "conv_fcn3_b": (512,),
    "pred_w": (10, 16),
}

C2_EXPECTED = {
    "conv1_w": "stem.conv1.weight",
    "res_conv1_bn_s": "stem.conv1.norm.weight",
    "res_conv1_bn_b": "stem.conv1.norm.bias",
    "res2_0_branch2a_w": "res2.0.conv1.weight",
    "res2_0_branch2a_bn_s": "res2.0.conv1.norm.weight",
    "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
    "res2_0_branch2a_bn_running_mean": "res2.0.conv1.norm.running_mean",
    "res2_0_branch2a_bn_riv": "res2.0.conv1.norm.running_var",
    "res3_0_branch1_bn_b": "res3.0.shortcut.norm.bias",
    "res2_2_branch2c_w": "res2.2.conv3.weight",
    "fpn_inner_res5_2_sum_w": "fpn_lateral5.weight",
    "fpn_inner_res4_5_sum_lateral_b": "fpn_lateral4.bias",
    "fpn_res3_3_sum_w": "fpn_output3.weight",
    "conv_rpn_fpn2_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_fpn2_b": "proposal_generator.rpn_head.objectness_logits.bias",
    "rpn_bbox_pred_fpn2_w": "proposal_generator.rpn_head.anchor_deltas.weight",
    "fc6_w": "box_head.fc1.weight",
    "fc7_b": "box_head.fc2.bias",
    "cls_score_w": "cls_score.weight",
    "cls_score_b": "cls_score.bias",
    "bbox_pred_w": "bbox_pred.weight",
    "bbox_pred_b": "bbox_pred.bias",
    "_[mask]_fcn1_w": "mask_head.mask_fcn1.weight",
    "conv5_mask_b": "mask_head.deconv.bias",
    "mask_fcn_logits_w": "mask_head.predictor.weight",
    "kps_score_lowres_w": "roi_heads.keypoint_head.score_lowres.weight",
    "conv_fcn3_b": "roi_heads.keypoint_head.conv_fcn3.bias",
    "pred_w": "linear.weight",
}


def _c2_blobs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in C2_BLOBS.items()}


def test_rename_c2_keys():
    for old, new in C2_EXPECTED.items():
        assert rename_c2_key(old) == new, old


def test_caffe2_pkl_renamed_and_fixed(tmp_path):
    blobs = _c2_blobs()
    momentum = {k + "_momentum": np.zeros_like(v) for k, v in blobs.items()}
    path = _dump({"blobs": {**blobs, **momentum}, "cfg": "yaml text"}, tmp_path / "detectron1.pkl")
    loaded = read_checkpoint(path)
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
    model = loaded["model"]
    assert set(model) == set(C2_EXPECTED.values())
    for old, new in C2_EXPECTED.items():
        value = blobs[old]
        if new.startswith("cls_score."):
            expected = np.concatenate([value[1:], value[:1]])
            np.testing.assert_array_equal(model[new][-1], value[0])  # background row last
        elif new.startswith("bbox_pred."):
            expected = value[4:]
        elif new.startswith("mask_head.predictor."):
            expected = value[1:]
        else:
            expected = value
        np.testing.assert_array_equal(model[new], expected, err_msg=old)
    assert model["bbox_pred.weight"].shape == (320, 32) and model["cls_score.bias"].shape == (81,)
    assert model["mask_head.predictor.weight"].shape == (80, 8, 1, 1)


def test_caffe2_imagenet_pkl_without_blobs(tmp_path):
    blobs = {"res2_0_branch2a_w": np.ones((2, 2, 1, 1), np.float32), "fc1000_b": np.zeros(3, np.float32)}
    model = read_checkpoint(_dump(blobs, tmp_path / "R-50.pkl"))["model"]
    assert sorted(model) == ["fc1000.bias", "res2.0.conv1.weight"]


def test_c2_name_collision_is_an_error():
    with pytest.raises(UserError, match="both map to"):
        convert_c2_names(
            {"res2_0_branch2a_bn_rm": np.zeros(1), "res2_0_branch2a_bn_running_mean": np.zeros(1)}
        )


# ----------------------------------------------------------------------------------------------------
# heuristic matching
# ----------------------------------------------------------------------------------------------------


def test_align_suffix_longest_and_passthrough():
    model_keys = ["backbone.bottom_up.res2.0.conv1.weight", "backbone.bottom_up.stem.conv1.weight",
                  "roi_heads.box_head.fc1.weight", "backbone.xconv1.weight"]  # fmt: skip
    ckpt = {"res2.0.conv1.weight": np.ones(1), "conv1.weight": np.zeros(1),
            "stem.conv1.weight": np.full(1, 2.0), "box_head.fc1.weight": np.full(1, 3.0),
            "fc1000.bias": np.full(1, 4.0)}  # fmt: skip
    out = align_to_model_keys(model_keys, ckpt)
    assert out["backbone.bottom_up.res2.0.conv1.weight"][0] == 1.0
    assert out["backbone.bottom_up.stem.conv1.weight"][0] == 2.0  # the longer suffix wins over conv1.weight
    assert out["roi_heads.box_head.fc1.weight"][0] == 3.0
    assert "backbone.xconv1.weight" not in out  # "conv1.weight" must start at a dot
    assert out["fc1000.bias"][0] == 4.0 and out["conv1.weight"][0] == 0.0  # unmatched keys kept
    assert len(out) == 5


def test_align_exact_and_shape_mismatch():
    ckpt = {"a.b": np.zeros((2, 3)), "c": np.zeros(5)}
    out = align_to_model_keys(["a.b", "x.c"], ckpt, model_shapes={"a.b": (2, 3), "x.c": (4,)})
    assert sorted(out) == ["a.b", "c"]  # x.c skipped on shape, c passed through


def test_align_ambiguity_is_an_error():
    with pytest.raises(UserError, match="matches two model keys"):
        align_to_model_keys(["head.a.weight", "tail.a.weight"], {"a.weight": np.zeros(1)})


# ----------------------------------------------------------------------------------------------------
# security and errors
# ----------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("ext", ["pkl", "pth-zip", "pth-legacy"])
def test_malicious_pickle_refused_and_not_run(tmp_path, ext):
    marker = tmp_path / "pwned"
    payload = {"model": {"w": np.zeros(1)}, "__author__": "x", "evil": _Evil(str(marker))}
    if ext == "pkl":
        path = _dump(payload, tmp_path / "evil.pkl")
    else:
        payload["model"] = {"w": torch.zeros(1)}
        path = _save(payload, tmp_path / "evil.pth", ext.split("-")[1])
    with pytest.raises(UserError, match="refused") as err:
        read_checkpoint(path)
    assert path in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_eval_refused(tmp_path):
    path = _dump({"blobs": {"x": _EvalEvil()}}, tmp_path / "eval.pkl")
    with pytest.raises(UserError, match="builtins.eval"):
        read_pickle(path)


def _truncate(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["zip", "legacy", "d2pkl", "c2pkl"])
def test_truncated_files(tmp_path, kind):
    if kind in FORMATS:
        path = _save(_state_dict(), tmp_path / "cut.pth", kind)
    elif kind == "d2pkl":
        path = _dump({"model": _numpy_state(), "__author__": "x"}, tmp_path / "cut.pkl")
    else:
        path = _dump({"blobs": _c2_blobs()}, tmp_path / "cut.pkl")
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        read_checkpoint(_truncate(path))
    assert path in str(err.value)


def test_legacy_short_last_storage(tmp_path):
    path = _save({"a": torch.ones(100), "b": torch.ones(1000)}, tmp_path / "short.pth", "legacy")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-8])
    with pytest.raises(UserError, match="truncated or corrupt.*storage"):
        read_checkpoint(path)


def test_text_file_named_pth(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        read_checkpoint(str(path))
    assert str(path) in str(err.value)


def test_missing_directory_and_extension(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(str(tmp_path / "absent.pkl"))
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(UserError, match="directory"):
        read_checkpoint(str(tmp_path / "dir.pth"))
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF")
    with pytest.raises(UserError, match="unknown checkpoint extension") as err:
        read_checkpoint(str(other))
    assert str(other) in str(err.value)


def test_not_a_dict_of_arrays(tmp_path):
    path = _save([torch.ones(1)], tmp_path / "list.pth", "zip")
    with pytest.raises(UserError, match="not a dict of arrays"):
        read_checkpoint(path)
    path = _dump({"model": {"w": "text"}, "__author__": "x"}, tmp_path / "str.pkl")
    with pytest.raises(UserError, match="'w' is a str"):
        read_checkpoint(path)
    path = _dump([1, 2], tmp_path / "list.pkl")
    with pytest.raises(UserError, match="not a dict of arrays"):
        read_checkpoint(path)


def test_torchscript_archive_rejected(tmp_path):
    path = str(tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UserError, match=path):
        read_checkpoint(path)


def test_pickle_cannot_alter_shared_stand_ins(tmp_path):
    # BUILD {"dtype": "f8"} onto the global torch.FloatStorage, then load a real float32 file
    path = tmp_path / "poison.pkl"
    path.write_bytes(b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x02\x00\x00\x00f8sb.")
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_pickle(str(path))
    sd = {"w": torch.randn(3)}
    _assert_same(read_torch_file(_save(sd, tmp_path / "after.pth", "zip")), sd)

"""Shared fixtures. Eight fake CPU devices for the sharding tests (must be set before jax is imported)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAXSEG_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "xla"))

import pytest  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def fixture_module(folder: str, name: str):
    """A script of a tests/data folder as a module of its own (fixtures share file names such as
    make_weights.py, so a plain import would return whichever came first)."""
    import importlib.util

    alias = f"{folder}_{name}".replace("/", "_")
    spec = importlib.util.spec_from_file_location(alias, os.path.join(DATA, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def d2_maskrcnn_weights(tmp_path_factory) -> str:
    """detectron2 model-zoo style .pkl of the seeded random weights the reference was made with (seed 1)."""
    import json
    import pickle

    make_weights = fixture_module("d2_maskrcnn", "make_weights")

    with open(os.path.join(DATA, "d2_maskrcnn", "keys.json")) as f:
        keys = json.load(f)
    path = tmp_path_factory.mktemp("d2w") / "model_final_random.pkl"
    with open(path, "wb") as f:
        pickle.dump(make_weights.make_weights(keys, seed=1), f, protocol=4)
    return str(path)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """$JAXSEG_DATASETS in the session's tmp folder (shared with other modules: generated once)."""
    root = tmp_path_factory.getbasetemp() / "jaxseg_datasets"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXSEG_DATASETS", str(root))
        yield root


@pytest.fixture(scope="session")
def blendmask_weights(tmp_path_factory) -> dict[str, str]:
    """AdelaiDet BlendMask R_50_3x .pth files of the seeded random weights the reference was made with (seed 1):
    "bare" (the state dict, as the published files), "wrapped" ({'model': ..., 'iteration': ...}, torch's
    legacy (pre-1.6) serialisation)."""
    import json

    bm_weights = fixture_module("blendmask_R_50_3x", "make_weights")

    here = os.path.join(DATA, "blendmask_R_50_3x")
    with open(os.path.join(here, "keys.json")) as f:
        keys = json.load(f)
    with open(os.path.join(here, "state_dict_metadata.json")) as f:
        metadata = json.load(f)
    sd = bm_weights.make_weights(keys, seed=1)
    out = tmp_path_factory.mktemp("bmw")
    paths = {}
    for variant, kwargs in (("bare", {}), ("wrapped", {"wrap": "model", "legacy": True})):
        paths[variant] = str(out / f"blendmask_{variant}.pth")
        with open(paths[variant], "wb") as f:
            f.write(bm_weights.to_pth_bytes(sd, metadata=metadata, **kwargs))
    return paths


@pytest.fixture(scope="session")
def tensormask_weights(tmp_path_factory) -> str:
    """detectron2 model-zoo style .pkl of TensorMask R50-FPN's seeded random weights (seed 1, with the legacy
    anchor_generator.cell_anchors entries of the 2019 files)."""
    import json
    import pickle

    make_weights = fixture_module("tensormask_R_50_FPN_1x", "make_weights")
    with open(os.path.join(DATA, "tensormask_R_50_FPN_1x", "keys.json")) as f:
        keys = json.load(f)
    path = tmp_path_factory.mktemp("tmw") / "tensormask_random.pkl"
    with open(path, "wb") as f:
        pickle.dump(make_weights.make_weights(keys, seed=1), f, protocol=4)
    return str(path)


@pytest.fixture(scope="session")
def embedmask_weights(tmp_path_factory) -> dict[str, str]:
    """gakkiri/EmbedMask MS_R_50_2x .pth files of the seeded random weights the reference was made with (seed 1):
    "wrapped" ({'model': ..., 'iteration': ...} with the legacy pixel_mean / pixel_std entries, as the repo's
    training writes) and "bare" (the state dict alone, as tools/remove_optim_from_ckpt.py writes)."""
    import json

    import torch

    make_weights = fixture_module("embedmask_R_50", "make_weights")
    with open(os.path.join(DATA, "embedmask_R_50", "keys.json")) as f:
        keys = json.load(f)
    sd = make_weights.make_weights(keys, seed=1)
    out = tmp_path_factory.mktemp("emw")
    paths = {"wrapped": str(out / "embedmask_wrapped.pth"), "bare": str(out / "embedmask_bare.pth")}
    make_weights.save_pth(sd, paths["wrapped"])
    torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items() if not k.startswith("pixel_")}, paths["bare"])
    return paths

"""Shared fixtures: real TIFF files, real Zarr stores, the CLI run in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
VOLSEG = [sys.executable, "-m", "volseg_cli.main"]


def write_frames(folder: Path, array: np.ndarray, *, name="t{t:03d}_z{z:03d}.tif", **kw) -> Path:
    """Write a (t, z, y, x) array as one 2D TIFF per frame."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(array.shape[0]):
        for z in range(array.shape[1]):
            tifffile.imwrite(folder / name.format(t=t, z=z), array[t, z], **kw)
    return folder


@pytest.fixture
def frames_dir(tmp_path):
    """A small uint8 dataset as per-frame TIFFs, and the array it holds."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(3, 4, 37, 53), dtype=np.uint8)
    return write_frames(tmp_path / "frames", arr), arr


@pytest.fixture
def cli(capsys):
    """Run `volseg ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from volseg_cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_volseg(*args, **kw) -> subprocess.CompletedProcess:
    """Run the volseg command in a subprocess (for kill tests and real exit codes)."""
    return subprocess.run(VOLSEG + [str(a) for a in args], capture_output=True, text=True, **kw)


def make_image_store(path: Path, array: np.ndarray, *, mask: bool = False):
    """A complete volseg image store holding ``array`` (t, z, y, x), written directly."""
    from volseg import store as st

    job = st.make_job("test", parameters={"mask": mask})
    image = st.create_image(path, shape=array.shape, dtype=array.dtype, job=job,
                            extra={"content": "mask" if mask else "image"})
    image.array[...] = array
    st.finish(image.group)
    return st.open_image(path)


def make_tiny_model(path: Path, *, depth: int = 2, filters: int = 4, seed: int = 0,
                    threshold: float = 0.5) -> Path:
    """A real (untrained, seeded) volseg U-Net, small enough to run in milliseconds."""
    import keras

    from volseg.model import base_info, build_unet, save_model

    keras.utils.set_random_seed(seed)
    model = build_unet(base_filters=filters, depth=depth, normalization=(0.0, 255.0))
    save_model(model, path, info=base_info(depth=depth, base_filters=filters, dropout=0.1,
                                           batch_norm=True, normalization=(0.0, 255.0),
                                           threshold=threshold))
    return path


def make_prediction(path, probability: np.ndarray, *, threshold=0.5, with_probability=True):
    """A complete prediction store from a uint8 0..255 probability array."""
    from volseg import store as st

    job = st.make_job("test-predict", parameters={"threshold": threshold})
    pred = st.create_prediction(path, shape=probability.shape, chunks=(1, 1) + probability.shape[2:],
                                shards=None, job=job, probability=with_probability,
                                threshold=threshold)
    if with_probability:
        pred.probability.array[...] = probability
        st.finish(pred.probability.group)
    pred.mask.array[...] = (probability >= threshold * 255).astype(np.uint8)
    st.finish(pred.mask.group)
    st.finish(pred.group)
    return st.open_prediction(path)


# --------------------------------------------------------------------------- NGFF validation

def volseg_stores(folder: Path) -> list[Path]:
    """The complete stores volseg wrote under ``folder`` (top-level groups only)."""
    import json

    found = []
    for meta in sorted(Path(folder).rglob("zarr.json")):
        store = meta.parent
        if (store.parent / "zarr.json").is_file() or store.name.endswith(".volseg-new"):
            continue
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
            for node in store.rglob("zarr.json"):
                json.loads(node.read_text())
        except (OSError, ValueError, AttributeError):
            continue  # a test damaged its metadata on purpose
        if isinstance(attrs, dict) and (attrs.get("volseg") or {}).get("complete"):
            found.append(store)
    return found


def validate_ngff(store: Path) -> list[str]:
    """Validate every group of a volseg store with ome-zarr-models; returns model names.

    The root (an image, or a prediction's ``labels`` group) and, in a prediction, the
    ``probability`` and ``mask`` image groups each.
    """
    from ome_zarr_models import open_ome_zarr

    groups = [store] + [store / p for p in ("probability", "mask") if (store / p / "zarr.json").is_file()]
    return [type(open_ome_zarr(str(g), version="0.5")).__name__ for g in groups]


@pytest.fixture(autouse=True)
def _stores_validate(request):
    """Every complete store a test writes under its ``tmp_path`` passes NGFF validation."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is None or request.node.get_closest_marker("no_ngff_check"):
        return
    for store in volseg_stores(tmp):
        try:
            validate_ngff(store)
        except Exception as exc:  # ome-zarr-models raises RuntimeError/ValueError/ValidationError
            pytest.fail(f"{store} does not validate as OME-Zarr: {str(exc)[:2000]}")

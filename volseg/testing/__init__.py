"""What volseg's tests, benchmarks and scripts share: small real inputs and one check.

Real TIFF files, real Zarr stores and a real (tiny, untrained) Keras U-Net, made in a
few milliseconds; :func:`assert_refused` is the one rule for bad input: exit 2 and
exactly one line on stderr, with no traceback. Importable without pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

#: The volseg command, run in a subprocess (for kill tests and real exit codes).
VOLSEG_COMMAND = [sys.executable, "-m", "volseg_cli.main"]


def write_frames(folder: Path, array: np.ndarray, *, name="t{t:03d}_z{z:03d}.tif", **kw) -> Path:
    """Write a (t, z, y, x) array as one 2D TIFF per frame."""
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(array.shape[0]):
        for z in range(array.shape[1]):
            tifffile.imwrite(folder / name.format(t=t, z=z), array[t, z], **kw)
    return folder


def run_volseg(*args, **kw) -> subprocess.CompletedProcess:
    """Run the volseg command in a subprocess; text output captured."""
    return subprocess.run(VOLSEG_COMMAND + [str(a) for a in args], capture_output=True,
                          text=True, **kw)


def make_image_store(path: Path, array: np.ndarray, *, mask: bool = False, shards=None):
    """A complete volseg image store holding ``array`` (t, z, y, x), written directly
    (``shards``: the blocks of a stage, default volseg's)."""
    from volseg.io import store as st

    job = st.make_job("test", parameters={"mask": mask})
    chunks = None if shards is None else (1, 1, *array.shape[2:])
    image = st.create_image(path, shape=array.shape, dtype=array.dtype, job=job,
                            chunks=chunks, shards=shards,
                            extra={"content": "mask" if mask else "image"})
    image.array[...] = array
    st.finish(image.group)
    return st.open_image(path)


def make_tiny_model(path: Path, *, depth: int = 2, filters: int = 4, seed: int = 0,
                    threshold: float = 0.5) -> Path:
    """A real (untrained, seeded) volseg U-Net, small enough to run in milliseconds."""
    from volseg.models.backend import import_keras
    from volseg.models.unet import base_info, build_unet, save_model

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    model = build_unet(base_filters=filters, depth=depth, normalization=(0.0, 255.0))
    save_model(model, path, info=base_info(depth=depth, base_filters=filters, dropout=0.1,
                                           batch_norm=True, normalization=(0.0, 255.0),
                                           threshold=threshold))
    return Path(path)


def make_prediction(path, probability: np.ndarray, *, threshold=0.5, with_probability=True):
    """A complete prediction store from a uint8 0..255 probability array."""
    from volseg.io import store as st

    job = st.make_job("test-predict", parameters={"threshold": threshold})
    pred = st.create_prediction(path, shape=probability.shape,
                                chunks=(1, 1) + probability.shape[2:], shards=None, job=job,
                                probability=with_probability, threshold=threshold)
    if with_probability:
        pred.probability.array[...] = probability
        st.finish(pred.probability.group)
    pred.mask.array[...] = (probability >= threshold * 255).astype(np.uint8)
    st.finish(pred.mask.group)
    st.finish(pred.group)
    return st.open_prediction(path)


def validate_ngff(store: Path) -> list[str]:
    """Validate every group of a volseg store with ome-zarr-models; returns model names.

    The root (an image, or a prediction's ``labels`` group) and, in a prediction, the
    ``probability`` and ``mask`` image groups each.
    """
    from ome_zarr_models import open_ome_zarr

    groups = [store] + [store / p for p in ("probability", "mask") if (store / p / "zarr.json").is_file()]
    return [type(open_ome_zarr(str(g), version="0.5")).__name__ for g in groups]


def assert_refused(result, *needles) -> str:
    """Bad input handled as volseg promises: exit 2 and exactly one line on stderr, no
    traceback (none from Dask either), holding every needle; returns that line.

    ``result`` is ``(code, stdout, stderr)`` (the in-process CLI) or a
    :class:`subprocess.CompletedProcess`.
    """
    if isinstance(result, subprocess.CompletedProcess):
        code, err = result.returncode, result.stderr
    else:
        code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err and "Compute Failed" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]

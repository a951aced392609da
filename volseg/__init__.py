"""volseg: segmentation of microscopy volumes larger than memory.

Every stage streams over blocks of an OME-Zarr store: ``convert`` (TIFF -> Zarr),
``train`` (patches sampled from Zarr), ``predict`` (tiles through a U-Net, on a local
or Slurm Dask cluster) and ``evaluate`` (exact metrics from integer counts).

In a notebook::

    import volseg
    volseg.convert("data/images", "images.zarr")
    volseg.train("images.zarr", "truth.zarr", "forest.model", method="forest")
    volseg.predict("images.zarr", "forest.model", "pred.zarr")
    report = volseg.evaluate("pred.zarr", "truth.zarr")
    mask = volseg.open("pred.zarr")  # xarray over dask, dims t, z, y, x

The functions are in :mod:`volseg.api`; each stage's module (``volseg.predict``) is
also callable as that function. Nothing heavy is imported until one runs.
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing on machines without a
# GPU) would bury volseg's own messages; real errors still surface as Python exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__", "convert", "train", "predict", "evaluate", "verify",
           "open"]

#: The stage modules, callable as the API functions of the same name (volseg._callable).
_STAGES = ("convert", "train", "predict", "evaluate", "verify")


def __getattr__(name):
    # Lazy: importing a stage pulls in dask, zarr and more; TensorFlow only when a model runs.
    import importlib

    if name in _STAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "open":
        from .api import open

        return open
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

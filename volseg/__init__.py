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

The functions are plain functions of :mod:`volseg.api`, found here lazily, so ``import
volseg`` stays fast: nothing heavy is imported until one runs. The package's layers, from
the bottom: ``ops`` (numpy on arrays in memory), ``io`` (places, stores, NGFF, TIFF),
``engine`` (blocks, outputs, clusters), ``viz`` and ``data``, ``models`` (U-Net,
forest), ``training``, ``stages`` (one module per command), ``api``; see
docs/architecture.md.
"""

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing on machines without a
# GPU) would bury volseg's own messages; real errors still surface as Python exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from volseg.errors import InputError  # noqa: E402
from volseg.version import __version__  # noqa: E402

#: The API functions, from :mod:`volseg.api` on first use.
_API = ("convert", "train", "predict", "evaluate", "suggest", "verify", "export_model",
        "open")

__all__ = ["InputError", "__version__", *_API]


def __getattr__(name):
    # Lazy: the API's stages pull in dask, zarr and more; TensorFlow only when a model runs.
    if name in _API:
        import importlib

        return getattr(importlib.import_module("volseg.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

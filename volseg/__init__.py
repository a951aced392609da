"""volseg: segmentation of microscopy volumes larger than memory.

Every stage streams over blocks of an OME-Zarr store: ``convert`` (TIFF -> Zarr),
``train`` (patches sampled from Zarr), ``predict`` (tiles through a U-Net, on a local
or Slurm Dask cluster) and ``evaluate`` (exact metrics from integer counts).
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing on machines without a
# GPU) would bury volseg's own messages; real errors still surface as Python exceptions.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]

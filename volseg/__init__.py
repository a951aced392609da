"""volseg: segmentation of microscopy volumes larger than memory.

Every stage streams over blocks of an OME-Zarr store: ``convert`` (TIFF -> Zarr),
``train`` (patches sampled from Zarr), ``predict`` (tiles through a U-Net, on a local
or Slurm Dask cluster) and ``evaluate`` (exact metrics from integer counts).
"""

__version__ = "0.1.0"

from .errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]

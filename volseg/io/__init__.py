"""Storage: OME-Zarr stores, TIFF files, locations, checked reads.

Importing it makes volseg's codec pipeline zarr's default (:mod:`volseg.io.codecs`).
"""

from volseg.io.codecs import use_fast_pipeline

use_fast_pipeline()

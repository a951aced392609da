"""The codec pipeline volseg's stores are read and written with: zarrs (Rust) where it
keeps volseg's promises, zarr-python's own pipeline where it would not.

zarr-python encodes and decodes chunks in Python's asyncio loop: about 110 MB/s for
convert on 2 cores, whatever the number of threads. The `zarrs` package plugs the Rust
`zarrs` crate into zarr-python as a *codec pipeline* (decode, encode, sharding, CRC32C
in parallel, without the GIL); the stores it writes are the same Zarr format with the
same codecs and checksums, and zarr-python reads them back identically (and the other way
round). It is used here with two limits:

* **Every chunk is written.** volseg promises that every chunk of its stores exists, so a
  deleted shard is told apart from an empty one (:mod:`volseg.io.integrity`). zarrs (up to
  0.2.3 at least) drops a chunk equal to the fill value even when the array says
  ``write_empty_chunks``, and drops such inner chunks from a shard's index. So a write
  goes to zarrs only when every chunk it writes is whole and differs from the fill value
  somewhere (images nearly always; a mask frame with no structure does not); any other
  write goes to zarr-python's pipeline, which writes them.
* **Local files only.** zarrs reads a local directory; stores at URLs (S3, HTTPS) use
  zarr-python's pipeline as before, without zarrs' "unsupported store" warning.
* **Whole chunks only, for reads too.** zarrs checks every CRC32C when it decodes a whole
  shard, but not when it reads part of one (a frame of a shard, a halo): a flipped byte
  there came back as data. So only whole-shard reads go to zarrs; a partial read goes to
  zarr-python, which checks each inner chunk it decodes. A chunk that fails its checksum
  raises either way, and :class:`~volseg.io.integrity.CheckedArray` turns that into one
  line naming the damaged frames.

:func:`use_fast_pipeline` installs it as zarr's default when volseg is imported, unless
zarr's own ``codec_pipeline.path`` setting was changed (for example by the environment
variable ``ZARR_CODEC_PIPELINE__PATH``), which always wins: benchmarks compare the two
pipelines that way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings

import numpy as np
import zarr

#: zarr-python's own pipeline (its default setting of ``codec_pipeline.path``).
ZARR_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
#: The pipeline below, as zarr's ``codec_pipeline.path`` names it.
FAST_PIPELINE = "volseg.io.codecs.FastCodecPipeline"

try:
    from zarrs import ZarrsCodecPipeline
    from zarrs.pipeline import get_codec_pipeline_fallback, get_codec_pipeline_impl
except ImportError:  # no wheel for this platform: zarr-python's pipeline only
    ZarrsCodecPipeline = None


def every_chunk_differs_from_fill(region: np.ndarray, chunk_shape, fill_value) -> bool:
    """Whether each ``chunk_shape`` block of ``region`` holds a value other than the fill.

    ``region``'s shape must be a multiple of ``chunk_shape`` (a whole shard, or a whole
    chunk); anything else answers False.
    """
    if region.ndim != len(chunk_shape) or any(s % c for s, c in zip(region.shape, chunk_shape)):
        return False
    split = [n for s, c in zip(region.shape, chunk_shape) for n in (s // c, c)]
    blocks = np.asarray(region).reshape(split)
    inner_axes = tuple(range(1, len(split), 2))
    if isinstance(fill_value, float | np.floating) and np.isnan(fill_value):
        differs = ~np.isnan(blocks)
    else:
        differs = blocks != fill_value
    return bool(differs.any(axis=inner_axes).all())


def _inner_chunk_shape(metadata, outer_shape) -> tuple[int, ...]:
    from zarr.codecs import ShardingCodec

    codecs = getattr(metadata, "codecs", ())
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        return tuple(codecs[0].chunk_shape)
    return tuple(outer_shape)


@contextlib.contextmanager
def _os_errors(store):
    """zarrs reports a failed system call as RuntimeError("... (os error 28)"): raise it
    as the OSError it is, so a full disk reads as one line like any other."""
    try:
        yield
    except RuntimeError as exc:
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(getattr(store, "root", "") or "")) from None


if ZarrsCodecPipeline is not None:

    class FastCodecPipeline(ZarrsCodecPipeline):
        """zarrs for whole-chunk reads and for the writes it stores exactly as
        zarr-python would; zarr-python's pipeline for the rest (module docstring)."""

        @classmethod
        def from_array_metadata_and_store(cls, array_metadata, store):
            from zarr.storage import LocalStore

            impl = None
            if isinstance(store, LocalStore):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # unsupported metadata: Python does it
                    impl = get_codec_pipeline_impl(array_metadata, store, strict=False)
            return cls(metadata=array_metadata, store=store, impl=impl,
                       python_impl=get_codec_pipeline_fallback(array_metadata, strict=False))

        def __setstate__(self, state):
            # Rebuilt in the process that unpickles it (a Dask worker), with the same rule.
            fresh = type(self).from_array_metadata_and_store(state["metadata"], state["store"])
            self.__dict__.update(fresh.__dict__)

        async def read(self, batch_info, out, drop_axes=()):
            whole, part = self._split(batch_info, lambda item: item[4])
            if part:
                await self.python_impl.read(part, out, drop_axes)
            if whole:
                with _os_errors(self.store):
                    await super().read(whole, out, drop_axes)

        async def write(self, batch_info, value, drop_axes=()):
            data = None if drop_axes or value.shape == () else value.as_ndarray_like()
            whole, part = self._split(batch_info, functools.partial(self._stored_whole, data))
            if part:
                await self.python_impl.write(part, value, drop_axes)
            if whole:
                with _os_errors(self.store):
                    await super().write(whole, value, drop_axes)

        def _split(self, batch_info, to_zarrs) -> tuple[list, list]:
            """The chunks zarrs may handle, and the rest (all of them without zarrs)."""
            batch_info = list(batch_info)
            if self.impl is None:
                return [], batch_info
            whole, part = [], []
            for item in batch_info:
                (whole if to_zarrs(item) else part).append(item)
            return whole, part

        def _stored_whole(self, data, item) -> bool:
            """Whether zarrs stores this written chunk as zarr-python would (module docs):
            a whole chunk, and with ``write_empty_chunks`` no inner chunk all fill."""
            _, spec, _, out_selection, complete = item
            if not complete:
                return False
            if not spec.config.write_empty_chunks:
                return True  # zarrs drops empty chunks: what was asked
            if data is None:
                return False
            region = data[out_selection]
            if region.size != int(np.prod(spec.shape)):
                return False
            region = region.reshape(spec.shape)  # an integer index dropped length-1 axes
            inner = _inner_chunk_shape(self.metadata, spec.shape)
            return every_chunk_differs_from_fill(region, inner, spec.fill_value)

else:
    FastCodecPipeline = None


def use_fast_pipeline() -> str:
    """Make :class:`FastCodecPipeline` zarr's codec pipeline, unless zarr's setting was
    changed from its default or zarrs is not installed. Returns the pipeline in use."""
    current = zarr.config.get("codec_pipeline.path")
    chosen_elsewhere = current != ZARR_PIPELINE or "ZARR_CODEC_PIPELINE__PATH" in os.environ
    if FastCodecPipeline is not None and not chosen_elsewhere:
        from zarr.registry import register_pipeline

        register_pipeline(FastCodecPipeline)
        zarr.config.set({"codec_pipeline.path": FAST_PIPELINE})
        return FAST_PIPELINE
    return current

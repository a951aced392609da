"""Checked reads: a chunk that is missing, empty or damaged is never read as data.

Zarr returns the fill value for a chunk that is not there, so a deleted shard file
would read as black frames (or as "no structure" in a truth store) and every number
computed from it would be silently wrong. volseg therefore writes every chunk, even one
equal to the fill value (``write_empty_chunks``), and protects each one with a CRC32C
checksum (the shard index has its own). A store written that way says so in its
attributes (``volseg.io.integrity``), and every read of it through :class:`CheckedArray`:

* checks that each shard file the read touches is present and not empty (one ``stat``
  per shard: the read itself costs far more);
* turns a failed checksum or decoding into :class:`~volseg.errors.DamagedDataError`
  naming the store, the array and the frames (t, z) affected.

``volseg verify`` (:meth:`CheckedArray.damage`) also reads every shard's index: a chunk
listed there as absent reads as the fill value from an intact file.

Stores made by older volseg versions or by other tools carry no such promise: a missing
chunk there may be a legitimately empty one, so only decoding is checked (and
``volseg verify`` says so).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from volseg.errors import DamagedDataError
from volseg.ops.indices import format_ranges

#: What ``volseg.io.integrity`` holds for stores whose every chunk is written and checksummed.
INTEGRITY = {"every_chunk_written": True, "checksum": "crc32c"}

_ADVICE = ("recreate the store (rerun the command that made it) or restore it from a backup; "
           "`volseg verify` lists every damaged frame")


def key_box(key, shape) -> tuple[slice, ...]:
    """The bounding box (one slice per axis, step 1) of a basic-indexing key."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(n for n, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    box = []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            start, stop, _ = k.indices(n)
            box.append(slice(start, max(start, stop)))
        else:
            i = int(k) + n if int(k) < 0 else int(k)
            box.append(slice(i, i + 1))
    return tuple(box)


def _grid_range(box, step) -> list[range]:
    return [range(s.start // b, -(-s.stop // b)) for s, b in zip(box, step)]


def format_frames(frames) -> str:
    """``{(1, 0), (1, 1), (1, 2), (3, 5)}`` -> ``"t=1 z=0-2; t=3 z=5"`` (at most 6 groups)."""
    by_t: dict[int, list[int]] = {}
    for t, z in sorted(frames):
        by_t.setdefault(t, []).append(z)
    groups = [f"t={t} z={format_ranges(zs)}" for t, zs in by_t.items()]
    text = "; ".join(groups[:6])
    if len(groups) > 6:
        text += f"; ... ({len(frames)} frames in {len(groups)} time points)"
    return text


@dataclass(frozen=True)
class Damage:
    """Frames of one array that cannot be read, and why."""

    frames: frozenset  # of (t, z)
    missing: frozenset  # the subset whose chunk data is absent or empty

    def __bool__(self) -> bool:
        return bool(self.frames)

    def describe(self, label: str) -> str:
        damaged = self.frames - self.missing
        parts = []
        if self.missing:
            parts.append(f"chunk data missing or empty for frames {format_frames(self.missing)}")
        if damaged:
            parts.append(f"damaged chunks (checksum or decoding failed) in frames "
                         f"{format_frames(damaged)}")
        return f"{label}: {' and '.join(parts)}; {_ADVICE}"


class CheckedArray:
    """A Zarr array (dims t, z, y, x) whose reads refuse missing or damaged chunks.

    Indexing (ints and slices) reads like the Zarr array; assignment writes every chunk,
    fill-valued ones included. Other attributes (``shape``, ``dtype``, ``chunks``,
    ``shards``, ``compressors`` ...) are the Zarr array's. Pickles small (the array's
    store and path, not its data), so tasks can take it.

    Parameters
    ----------
    array : zarr.Array
    label : str
        How messages name it (``truth.zarr/0``).
    require_chunks : bool
        The store promises that every chunk was written (``volseg.io.integrity``): a missing
        or empty chunk file is damage, not emptiness.
    frame_axes : (int or None, int or None)
        Which axes of the array are t and z (None: the array has no such axis), so that
        damage is named by frame whatever the array's axis order (other tools' stores).
    """

    def __init__(self, array, label: str, *, require_chunks: bool, frame_axes=(0, 1)):
        self.zarray = array
        self.label = label
        self.require_chunks = require_chunks
        self.frame_axes = tuple(frame_axes)

    def __getattr__(self, name):
        if name in ("zarray", "label", "require_chunks", "frame_axes"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.zarray, name)

    def __repr__(self) -> str:
        return f"<CheckedArray {self.label} shape={self.zarray.shape} dtype={self.zarray.dtype}>"

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The unit of storage and of work: one shard (or chunk when unsharded)."""
        return tuple(self.zarray.shards or self.zarray.chunks)

    def __getitem__(self, key):
        box = key_box(key, self.zarray.shape)
        if self.require_chunks:
            missing = self.missing_frames(box)
            if missing:
                raise DamagedDataError(Damage(missing, missing).describe(self.label))
        try:
            return self.zarray[key]
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            damage = self.damage(box)
            if damage:
                raise DamagedDataError(damage.describe(self.label)) from None
            raise exc

    def __setitem__(self, key, value) -> None:
        self.zarray.with_config({"write_empty_chunks": True})[key] = value

    # ------------------------------------------------------------------ checks

    def _shard_keys(self, box):
        step = self.block_shape
        ranges = _grid_range(box, step)
        for coords in itertools.product(*ranges):
            key = self.zarray.metadata.encode_chunk_key(coords)
            path = self.zarray.store_path.path
            yield coords, f"{path}/{key}" if path else key

    def _frames_of(self, coords, box, step) -> set:
        region = tuple(slice(max(b.start, c * s), min(b.stop, (c + 1) * s))
                       for b, c, s in zip(box, coords, step))
        return self._frames(region)

    def _frames(self, region) -> set:
        """The (t, z) frames a box covers (an absent t or z axis is frame 0)."""
        t, z = (range(region[a].start, region[a].stop) if a is not None else range(1)
                for a in self.frame_axes)
        return {(i, j) for i in t for j in z}

    def missing_frames(self, box=None) -> frozenset:
        """Frames in ``box`` (default: all) whose shard file is absent or empty.

        One size query per shard: cheap next to reading the data. Empty for stores that
        do not promise every chunk (``require_chunks`` false).
        """
        from zarr.core.sync import sync

        if not self.require_chunks:
            return frozenset()
        box = box or tuple(slice(0, n) for n in self.zarray.shape)
        store = self.zarray.store_path.store
        step = self.block_shape
        lost: set = set()
        for coords, key in self._shard_keys(box):
            try:
                size = sync(store.getsize(key))
            except FileNotFoundError:
                size = 0
            if size == 0:
                lost |= self._frames_of(coords, box, step)
        return frozenset(lost)

    def absent_chunk_frames(self, box=None) -> frozenset:
        """Frames in ``box`` (default: all) with an inner chunk that its shard's index
        lists as absent.

        Zarr reads an absent inner chunk as the fill value, and a shard file can lack
        chunks while being present and intact (two writers racing on one shard, a tool
        that skips fill-valued chunks). One read of each shard's index (16 bytes per
        chunk); empty for stores that do not promise every chunk, or that are not sharded
        with the index layout volseg writes (little-endian offsets, CRC32C, at the end).
        """
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        if not (self.require_chunks and self.zarray.shards and _volseg_index(self.zarray)):
            return frozenset()
        box = box or tuple(slice(0, n) for n in self.zarray.shape)
        store = self.zarray.store_path.store
        shape, chunks, step = self.zarray.shape, self.zarray.chunks, self.block_shape
        per_shard = tuple(s // c for s, c in zip(step, chunks))
        size = 16 * int(np.prod(per_shard)) + 4
        lost: set = set()
        for coords, key in self._shard_keys(box):
            data = sync(store.get(key, prototype=default_buffer_prototype(),
                                  byte_range=_suffix(size)))
            if data is None:
                continue  # a missing shard is missing_frames' to report
            raw = data.to_bytes()
            if len(raw) != size or _crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                continue  # a damaged index fails the read itself: damage() names it
            entries = np.frombuffer(raw[:-4], dtype="<u8").reshape(per_shard + (2,))
            for local in np.argwhere(entries[..., 0] == _ABSENT):
                first = [(c * p + i) * n for c, p, i, n in zip(coords, per_shard, local, chunks)]
                if all(f < n for f, n in zip(first, shape)):  # edge shards pad past the array
                    region = tuple(slice(max(b.start, f), min(b.stop, f + n))
                                   for b, f, n in zip(box, first, chunks))
                    if all(r.start < r.stop for r in region):
                        lost |= self._frames(region)
        return frozenset(lost)

    def damage(self, box=None) -> Damage:
        """Every frame in ``box`` (default: all) that is missing, empty or fails to decode.

        Reads chunk by chunk, so it is as slow as reading the data: used to name the
        frames after a read failed, and by ``volseg verify``.
        """
        box = box or tuple(slice(0, n) for n in self.zarray.shape)
        missing = set(self.missing_frames(box)) | set(self.absent_chunk_frames(box))
        bad: set = set()
        chunks = self.zarray.chunks
        for coords in itertools.product(*_grid_range(box, chunks)):
            region = tuple(slice(max(b.start, c * s), min(b.stop, (c + 1) * s))
                           for b, c, s in zip(box, coords, chunks))
            frames = self._frames(region)
            if frames <= missing:
                continue
            try:
                self.zarray[region]
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception:
                bad |= frames
        return Damage(frozenset(missing | bad), frozenset(missing))


#: An absent inner chunk's offset (and length) in a shard index.
_ABSENT = np.uint64(2**64 - 1)


def _volseg_index(zarray) -> bool:
    """``zarray``'s shard indexes are laid out as volseg writes them: little-endian
    offsets and lengths, then their CRC32C, at the shard's end."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codecs = zarray.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    sharding = codecs[0]
    index = tuple(sharding.index_codecs)
    return (sharding.index_location.value == "end" and len(index) == 2
            and isinstance(index[0], BytesCodec) and index[0].endian is not None
            and index[0].endian.value == "little" and isinstance(index[1], Crc32cCodec))


def _suffix(size: int):
    from zarr.abc.store import SuffixByteRequest

    return SuffixByteRequest(size)


def _crc32c(data: bytes) -> int:
    import google_crc32c  # zarr's own dependency for the crc32c codec

    return int(google_crc32c.value(data))


def nonfinite_counts(frames: np.ndarray) -> np.ndarray:
    """NaN or infinite pixels per frame of a (..., y, x) array (zeros for integer data)."""
    lead = int(np.prod(frames.shape[:-2])) if frames.ndim > 2 else 1
    if frames.dtype.kind not in "fc":
        return np.zeros(lead, dtype=np.int64)
    return (~np.isfinite(frames)).reshape(lead, -1).sum(axis=1)

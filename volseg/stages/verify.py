"""``volseg verify``: read every chunk of a store and name the frames that are damaged.

Built on the block engine: the grid is the array's shards, the process function reads
one shard chunk by chunk (:meth:`volseg.io.integrity.CheckedArray.damage`) and returns the
damaged frames, which are gathered as blocks finish.
"""

from __future__ import annotations

import functools

from volseg.io import store as st
from volseg.engine.blocks import BlockGrid, run_blocks
from volseg.io.integrity import Damage


def _parts(path, select) -> list[tuple[str, st.ImageStore]]:
    """The image groups of a store: ``[("0", image)]`` and its label images
    (``labels/NAME``), or a prediction's two."""
    obj = st.open_any(path, **select)
    if isinstance(obj, st.Prediction):
        return [(name, getattr(obj, name)) for name in ("probability", "mask")
                if getattr(obj, name) is not None]
    return [("0", obj)] + _label_images(obj)


def _label_images(image: st.ImageStore) -> list[tuple[str, st.ImageStore]]:
    """The label images an image store lists in its ``labels`` group (NGFF)."""
    node = st.read_node(image.path / "labels")
    names = st.ome_attributes((node or {}).get("attributes") or {}).get("labels") or []
    return [(f"labels/{name}", st.open_image(image.path / "labels" / name,
                                             require_complete=False)) for name in names]


def _arrays(parts) -> list[tuple[str, st.ImageStore, object]]:
    """Every array to check: each part's full resolution (named as the part) and its
    pyramid levels (``1``, ``2``, ... or ``mask/1``, ...)."""
    out = []
    for name, image in parts:
        paths = image.level_paths
        out.append((name, image, image.array))
        for level in paths[1:]:
            out.append((level if name == "0" else f"{name}/{level}", image, image.dataset(level)))
    return out


def _check_block(i: int, *, array, grid: BlockGrid) -> Damage:
    return array.damage(grid.region(i))


def verify_store(path, *, channel=None, series=None, client=None, progress=None) -> dict:
    """Check presence, checksums and decoding of every chunk of an image or prediction store
    (every pyramid level too).

    Parameters
    ----------
    path : path-like
        An image store or a prediction store.
    channel, series : int, optional
        The channel and bioformats2raw series of an image made by another tool.
    client : distributed.Client, optional
        Where to run (default threads of this process).
    progress : callable, optional
        ``progress(done, total)`` in shards, over all arrays of the store.

    Returns
    -------
    dict
        ``path``, ``ok``, ``complete`` and ``arrays``: per array (pyramid levels
        included: ``1``, ``mask/1``, ...) ``name``, ``shape``,
        ``chunks_checked`` (inner chunks), ``checks`` (what was checked: stores without
        volseg's integrity record get decoding only), ``damaged`` (sorted ``[t, z]``
        frames), ``missing`` (the subset whose data is absent) and ``message``.
    """
    parts = _parts(path, {"channel": channel, "series": series})
    checked = _arrays(parts)
    grids = [BlockGrid(array.shape, array.block_shape) for _, _, array in checked]
    total = sum(len(g) for g in grids)
    done = 0
    arrays = []
    # Stores made by other tools have no completion marker: read as they are.
    complete = all(image.complete or not image.made_by_volseg for _, image in parts)
    for (name, image, array), grid in zip(checked, grids):
        found = []
        offset = done

        def step(d, t, offset=offset):
            if progress:
                progress(offset + d, total)

        run_blocks(functools.partial(_check_block, array=array, grid=grid), range(len(grid)),
                   client=client, progress=step if progress else None, grid=grid,
                   on_result=lambda _, damage: found.append(damage))
        done += len(grid)
        frames = frozenset().union(*(d.frames for d in found)) if found else frozenset()
        missing = frozenset().union(*(d.missing for d in found)) if found else frozenset()
        damage = Damage(frames, missing)
        chunks = 1
        for n, c in zip(array.shape, array.chunks):
            chunks *= -(-n // c)
        arrays.append({
            "name": name, "shape": list(array.shape), "chunks_checked": chunks,
            "checks": ("presence, checksums and decoding" if image.checksummed else
                       "decoding only (no integrity record: made by another tool or an older "
                       "volseg, so a missing chunk cannot be told from an empty one)"),
            "damaged": sorted([list(f) for f in damage.frames]),
            "missing": sorted([list(f) for f in damage.missing]),
            "message": damage.describe(array.label) if damage else None,
        })
    return {"path": str(path), "complete": complete, "arrays": arrays,
            "ok": complete and not any(a["damaged"] for a in arrays)}


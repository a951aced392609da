"""A prediction's mask as an NGFF label image inside the image store.

NGFF keeps segmentations of an image in the image group's own ``labels/`` group
(``IMAGES.zarr/labels/NAME``, listed in ``labels/zarr.json``), so viewers open image and
segmentation together (napari-ome-zarr: an image layer and a labels layer). volseg
writes it as a *copy* of the prediction's finished mask, block by block, once the
prediction's blocks are all written: the image store's own arrays and metadata are
never touched, only ``labels/`` is added to. The label group is a volseg store like any
other: a writer lock, a ledger per level (resume), every chunk written and checksummed,
``complete`` last, and ``overwrite`` that builds the new one beside the old; its name is
added to the ``labels`` list only once it is complete.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import zarr

from volseg.io import store as st
from volseg.engine.blocks import BlockGrid, BlockLedger
from volseg.errors import InputError
from volseg.io.location import zarr_store
from volseg.engine.outputs import decide_output, open_output
from volseg.io.store import read_node
from volseg.engine.stage import StageRun

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_name(name) -> str:
    """A label name usable as a Zarr group name (letters, digits, ``_ . -``).

    Raises
    ------
    InputError
        Empty, a path, or other characters.
    """
    name = str(name)
    if not _NAME.match(name) or name.startswith(".") or name in ("labels",):
        raise InputError(f"{name!r} is not a label name: use letters, digits, '_', '.' and "
                         "'-' (e.g. vessels)", param="labels_into")
    return name


def target(image: st.ImageStore, name: str) -> Path:
    """Where the label image goes: ``IMAGE/labels/NAME``.

    Raises
    ------
    InputError
        The image is not a Zarr v3 (NGFF 0.5) group volseg can add a group to, or its
        ``labels`` path holds something that is not an NGFF labels group.
    """
    if read_node(image.path) is None:
        raise InputError(f"{image.path}: label images are written into NGFF 0.5 (Zarr v3) "
                         "image stores only; convert it with `volseg convert` first, or "
                         "leave the option out", param="labels_into")
    labels = image.path / "labels"
    node = read_node(labels)
    if labels.exists() and node is None and any(labels.iterdir()):
        raise InputError(f"{labels}: exists and is not a Zarr group; volseg does not write "
                         "into it", param="labels_into")
    if node is not None and not isinstance(st.ome_attributes(node.get("attributes") or {})
                                           .get("labels"), list):
        raise InputError(f"{labels}: is not an NGFF labels group (no 'labels' list)",
                         param="labels_into")
    return labels / check_name(name)


def preflight(path: Path, job: dict, overwrite: bool) -> None:
    """Refuse now, before the prediction runs, what :func:`write_label` would refuse:
    an existing label image of another job, or a complete one, without ``overwrite``."""
    if path.is_symlink():
        raise InputError(f"{path}: is a symbolic link", param="labels_into")
    if path.exists():
        decide_output(path, job, overwrite, "label image")


def _labels_group(image_path: Path) -> zarr.Group:
    """The image's ``labels`` group, created (listing nothing yet) when missing."""
    labels = image_path / "labels"
    if read_node(labels) is None:
        return zarr.create_group(zarr_store(labels, mode="w"), zarr_format=3,
                                 attributes={"ome": {"version": st.NGFF_VERSION, "labels": []}})
    return zarr.open_group(zarr_store(labels, mode="r+"), mode="r+")


def _list(group: zarr.Group, name: str) -> None:
    """Add ``name`` to the ``labels`` list (other keys, other labels kept)."""
    attrs = dict(group.attrs)
    ome = dict(attrs.get("ome") or {})
    names = list(ome.get("labels") or [])
    if name not in names:
        ome["labels"] = names + [name]
        group.attrs["ome"] = ome


def _copy_block(i: int, *, source: str, out: str, grid: BlockGrid) -> int:
    """Process function: block ``i`` of the prediction's mask into the label image."""
    region = grid.region(i)
    data = np.asarray(st.open_image(source, require_complete=False).array[region])
    label = st.open_image(out, require_complete=False, mode="r+")
    label.array[region] = data
    BlockLedger(label.group, len(grid)).mark_done(i)
    return int(data.nbytes)


def levels_of(image: st.ImageStore) -> int:
    """Pyramid levels a label image of ``image`` has: as many as the image (NGFF asks
    a label image for the same number of levels as its image)."""
    return len(image.level_paths) - 1


def write_label(mask_path, image: st.ImageStore, name: str, *, job: dict,
                overwrite: bool = False, client=None, progress=None,
                command: str | None = None) -> Path:
    """Copy the finished mask at ``mask_path`` into ``image``'s ``labels/NAME``.

    The label image has the mask's chunks and shards and the image's pixel sizes and
    units (so it overlays the image), the image's number of pyramid levels (made by max
    from the copy: :func:`levels_of`), and ``image-label`` metadata whose ``source`` is
    ``../../`` (the image group).

    Returns
    -------
    Path
        The label image written.
    """
    path = target(image, name)
    mask = st.open_image(mask_path, require_complete=False)
    array = mask.array
    labels = _labels_group(image.path)
    with open_output(path, job=job, overwrite=overwrite, what="label image",
                     command=command) as dest:
        def create(where):
            return st.create_image(where, shape=array.shape, dtype="uint8", chunks=array.chunks,
                                   shards=array.shards, job=job, name=name, units=image.units,
                                   scale=image.scale, ome=st.image_label("../../"),
                                   levels=levels_of(image), downsampling="max",
                                   extra={"content": "mask", "threshold": mask.volseg.get("threshold"),
                                          "meaning": mask.volseg.get("meaning")})

        label = dest.open_or_create(
            lambda where: st.open_image(where, require_complete=False, mode="r+"), create)
        grid = BlockGrid(array.shape, array.block_shape)
        task = functools.partial(_copy_block, source=str(mask_path),
                                 out=str(dest.write_path), grid=grid)
        StageRun(label, grid).run(task, client=client, progress=progress)
        dest.commit()
    _list(labels, path.name)  # listed last: viewers see only complete label images
    return path

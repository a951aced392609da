"""Export a volseg U-Net as a BioImage Model Zoo package (``volseg export-model``).

The package (:mod:`volseg.models.zoo`) runs in deepImageJ, ilastik, QuPath, napari
plugins and bioimageio.core. Its test tensors are a crop of one frame of the training
images (or of ``images``): the spec's test run feeds the input to each weights format and
compares with the output volseg's own model gave.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path

import numpy as np

from volseg.errors import InputError
from volseg.io import store as st
from volseg.io.location import text as location_text

#: Side of the test tensors' crop (pixels; smaller frames are used whole).
TEST_SIDE = 256

DEFAULT_LICENSE = "CC-BY-4.0"


def export_model(model, out, *, images=None, authors=None, license: str = DEFAULT_LICENSE,
                 name: str | None = None, overwrite: bool = False, log=None) -> dict:
    """Write the volseg U-Net ``model`` as a model zoo package ``out`` (a ``.zip``).

    Parameters
    ----------
    model : path-like
        A volseg ``.keras`` model file (a random forest is refused: the zoo holds networks).
    out : path-like
        The package to write, ending in ``.zip``; an existing file is replaced only with
        ``overwrite`` (and only by the complete new package).
    images : path-like, optional
        The image store the test tensors and cover are cut from. Default: the images the
        model was trained on (its record names them), if they can still be read.
    authors : list of str, optional
        The package's authors (the spec requires one); default: this user's login name.
    license : str
        An SPDX licence identifier for the weights (default CC-BY-4.0).
    name : str, optional
        The package's name; default: the model file's name.

    Returns
    -------
    dict
        ``path``, ``name``, ``weights`` (formats), ``test_shape``, ``threshold``, ``halo``.
    """
    from volseg.models import zoo
    from volseg.models.unet import (file_sha256, load_model, model_context,
                                    model_normalization, read_model_info)
    from volseg.version import __version__

    model = Path(model)
    info = read_model_info(model)
    if info.get("kind", "unet") == "forest":
        raise InputError(f"{model}: a random forest; the model zoo format holds neural "
                         "networks, so only U-Net models can be exported")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"must end in .zip (a model zoo package), got {out}", param="out")
    if out.is_dir():
        raise InputError(f"{out} is a folder; give a .zip file name", param="out")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; add --overwrite to replace it", param="out")
    if not out.parent.is_dir():
        raise InputError(f"the folder {out.parent} does not exist", param="out")
    authors = [a.strip() for a in (authors or [getpass.getuser()]) if a and a.strip()]
    if not authors:
        raise InputError("give at least one author's name", param="authors")
    _check_license(license)
    name = name or "volseg " + re.sub(r"[^A-Za-z0-9_+\- ()]", "-", model.stem)[:100]
    zoo.check_name(name)
    images = _test_images(images, info, model)
    network, info = load_model(model, precision="float32")
    context = model_context(info)
    test_input = _test_crop(images, context=context, multiple=int(info.get("multiple", 16)),
                            halo=int(info.get("margin", 32)))
    test_output = np.asarray(network.predict_on_batch(test_input), np.float32)
    low, high = model_normalization(network)
    # the network's own Rescaling constants: the package's preprocessing computes the same
    layer = network.get_layer("normalize")
    gain, offset = float(np.float32(layer.scale)), float(np.float32(layer.offset))
    threshold = float(info["threshold"])
    documentation = _documentation(name, model, info, images, threshold, context)
    config = {"threshold": threshold, "context": context, "margin": int(info.get("margin", 32)),
              "multiple": int(info.get("multiple", 16)),
              "normalization": info.get("normalization"),
              "source_model_sha256": file_sha256(model), "volseg_version": __version__}
    zoo.write_package(
        out, network=zoo.bare_network(network), name=name,
        description=f"2D U-Net (volseg) segmenting a tubular structure; probability output, "
                    f"threshold {threshold:.6g}",
        authors=authors, license=license, gain=gain, offset=offset,
        halo=int(info.get("margin", 32)), multiple=int(info.get("multiple", 16)),
        test_input=test_input, test_output=test_output,
        cover=_cover(test_input[0, ..., context // 2], test_output[0, ..., 0], threshold,
                     (low, high)),
        documentation=documentation, config=config,
        tags=["volseg", "unet", "2d", "semantic-segmentation", "fluorescence-light-microscopy"])
    if log:
        log(f"wrote {out}: ONNX and Keras weights, test tensors {list(test_input.shape)}")
    return {"path": str(out), "name": name, "weights": ["onnx", "keras_v3"],
            "test_shape": list(test_input.shape), "threshold": threshold,
            "halo": int(info.get("margin", 32))}


def _check_license(license: str) -> None:
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        LicenseId(license)
    except Exception:  # pydantic's ValidationError
        raise InputError(f"{license!r} is not an SPDX licence identifier (e.g. CC-BY-4.0, "
                         "MIT)", param="license") from None


def _test_images(images, info: dict, model: Path):
    """The image store the test tensors come from: ``images``, or the training images."""
    if images is not None:
        store = st.open_image(images)
        if store.volseg.get("content") == "mask":
            raise InputError(f"{images} is a truth (mask) store; the test tensors are cut "
                             "from images", param="images")
        return store
    recorded = ((info.get("provenance") or {}).get("images") or {}).get("path")
    if not recorded:
        raise InputError(f"{model}: its record names no training images; give an image store "
                         "to cut the test tensors from", param="images")
    try:
        return st.open_image(recorded)
    except InputError:
        raise InputError(f"the training images {recorded} (named by {model}) cannot be read "
                         "here; give an image store to cut the test tensors from",
                         param="images") from None


def _test_crop(images, *, context: int, multiple: int, halo: int) -> np.ndarray:
    """(1, h, w, K) float32 raw intensities: the centre of the middle frame of the store,
    at most TEST_SIDE on a side and a multiple of the network's input step."""
    from volseg.ops.context import context_slices

    t, zdepth, height, width = images.shape
    h = min(TEST_SIDE, height) // multiple * multiple
    w = min(TEST_SIDE, width) // multiple * multiple
    smallest = 2 * halo + multiple
    if min(h, w) < smallest:
        raise InputError(f"{images.path}: frames of {height} x {width} are too small for test "
                         f"tensors of at least {smallest} px", param="images")
    y0, x0 = (height - h) // 2, (width - w) // 2
    z = zdepth // 2
    zs = context_slices(z, zdepth, context) if context > 1 else [z]
    frames = [np.asarray(images.array[t // 2, int(k), y0:y0 + h, x0:x0 + w], np.float32)
              for k in zs]
    return np.stack(frames, axis=-1)[None]


def _cover(image: np.ndarray, probability: np.ndarray, threshold: float, levels) -> np.ndarray:
    """image | probability | mask side by side, 2:1, RGB uint8."""
    low, high = levels
    h, w = image.shape
    rows = max(3, min(h, 3 * w // 2) // 3 * 3)  # three panels 2:3 each make 2:1
    panel = 2 * rows // 3
    y0, x0 = (h - rows) // 2, (w - panel) // 2
    crop = lambda a: a[y0:y0 + rows, x0:x0 + panel]  # noqa: E731
    grey = np.clip((image - low) / max(high - low, 1e-12), 0, 1)
    panels = [crop(grey), crop(probability), crop((probability >= threshold).astype(np.float32))]
    rgb = np.concatenate(panels, axis=1)
    return np.repeat((rgb * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _documentation(name, model, info, images, threshold, context) -> str:
    training = info.get("training") or {}
    provenance = info.get("provenance") or {}
    trained_on = ((provenance.get("images") or {}).get("path")) or "not recorded"
    dice = training.get("val_dice")
    split = training.get("split") or {}
    lines = [
        f"# {name}",
        "",
        "A 2D U-Net trained with [volseg](https://pypi.org/project/volseg/) to segment a "
        "tubular structure in greyscale microscopy frames. Output: the probability of the "
        f"structure per pixel; the mask is `probability >= {threshold:.6g}` (the threshold "
        "volseg chose on its validation frames; `config.volseg.threshold`).",
        "",
        "## Input",
        "",
        f"- Raw intensities, one frame at a time (axes batch, y, x, channel), {context} "
        + ("channel (greyscale)." if context == 1 else
           f"channels: {context} consecutive z-slices, the middle one is segmented (at the "
           "ends of a stack the outermost slice is repeated)."),
        f"- Preprocessing (in the package): intensities {info.get('normalization')} mapped "
        "linearly to [0, 1] (`scale_linear`).",
        f"- Tiles: sides a multiple of {info.get('multiple')} px; crop "
        f"{info.get('margin')} px of each tile's output border (the declared halo) when "
        "tiling a large frame.",
        "",
        "## Training and validation",
        "",
        f"- Trained on: `{trained_on}` ({split.get('train_frames', '?')} training frames, "
        f"{split.get('val_frames', '?')} validation frames).",
        f"- Validation Dice at the chosen threshold: {dice if dice is not None else 'n/a'}; "
        f"at 0.5: {training.get('val_dice_at_0.5', 'n/a')}.",
        f"- Loss {training.get('loss', '?')}, {training.get('epochs_run', '?')} epochs, "
        f"patch {training.get('patch', '?')}.",
        f"- Test tensors: a crop of `{location_text(images.path)}`.",
        "",
        "## How to run it",
        "",
        "- volseg, on stores of any size (tiled, resumable, local or Slurm): "
        "`volseg predict IMAGES.zarr --model this-package.zip -o PRED.zarr`.",
        "- bioimageio.core: `bioimageio predict --inputs INPUT.npy this-package.zip`.",
        "- deepImageJ (Fiji), ilastik, QuPath: install the package from its .zip.",
        "",
        "Only the validation numbers above were measured; check the model on your own "
        "annotated frames (`volseg evaluate`) before trusting it on other data.",
        "",
    ]
    return "\n".join(lines)


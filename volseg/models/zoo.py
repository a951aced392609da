"""BioImage Model Zoo packages (bioimage.io, model spec 0.5): write one for a volseg U-Net,
and read one so that predict runs it through the block engine.

A package is ``rdf.yaml`` plus the files it names (weights, test tensors, a cover, the
documentation), zipped. The spec library (``bioimageio.spec``) builds and validates the
description: volseg only decides what goes into it. What a volseg package holds:

- the network *without* its intensity normalisation (a volseg ``.keras`` file carries it
  as its first layer), and the normalisation as the spec's ``scale_linear``
  preprocessing, so every consumer (deepImageJ, ilastik, bioimageio.core) sees it;
- ONNX weights (what most consumers run) and the same network as ``keras_v3``;
- the halo on each output space axis: the tile margin volseg predicts with;
- in ``config.volseg``: the validation-chosen threshold, the depth context K and the
  source model's SHA-256.

Reading: :func:`read_package` accepts 2D (y, x) and 3D (z, y, x) models with one input of
one channel (or a volseg package's K context slices) and one output of one channel, ONNX
weights, and the pointwise or per-frame pre/postprocessing steps listed in
:data:`PREPROCESSING`; anything else is refused with one line saying what the package
has. A 3D model sees a block's z-slices (with its z halo) as one window, or as several
overlapping windows when its z size is fixed and smaller (:func:`volseg.ops.tiling.
predict_stack`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volseg.errors import InputError
from volseg.models.onnx import keras_to_onnx, session

#: The paper the U-Net comes from, cited in every package volseg writes.
UNET_CITATION = {"text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
                         "Biomedical Image Segmentation. MICCAI 2015.",
                 "doi": "10.1007/978-3-319-24574-4_28"}

#: Steps volseg applies itself, before (pre) or after (post) the network. Per-frame
#: statistics (``zero_mean_unit_variance``, ``scale_range``) are computed over each whole
#: frame, as a consumer holding the frame in memory would.
PREPROCESSING = ("ensure_dtype", "scale_linear", "clip", "fixed_zero_mean_unit_variance",
                 "zero_mean_unit_variance", "scale_range", "sigmoid", "binarize")

#: Halo tried, in multiples of the input step, when a package declares none.
MAX_MEASURED_HALO = 128


def is_package(path) -> bool:
    """Whether ``path`` names a model zoo package (a zip holding ``rdf.yaml`` or
    ``bioimageio.yaml``, a folder holding one, or the YAML file itself) rather than a volseg
    model file."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in ("rdf.yaml", "bioimageio.yaml"))
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(("rdf.yaml", "bioimageio.yaml")) for n in zf.namelist())
    return False


@dataclass
class ZooModel:
    """What volseg needs to run a package's network on tiles."""

    path: str
    name: str
    onnx: bytes = field(repr=False)
    input_axes: tuple  # in the input tensor's order: "batch", "channel", "z", "y", "x"
    output_axes: tuple
    channels: int  # input channels: 1, or K context slices for a volseg package
    multiple: int  # tile sides are multiples of this (the input's size step)
    min_size: int
    fixed_size: int | None
    halo: int | None  # declared on the output axes (None: the package says nothing)
    threshold: float
    preprocessing: list
    postprocessing: list
    weights_sha256: str
    z_size: tuple | None = None  # a 3D model's z rule (fixed or None, minimum, step)
    z_halo: int | None = None  # declared on the output's z axis (None: says nothing)

    def info(self) -> dict:
        """The record predict uses, in the words of a volseg model's ``volseg.json``."""
        return {"kind": "zoo", "threshold": self.threshold, "context": self.channels,
                "multiple": self.multiple, "margin": self.halo, "name": self.name}

    @property
    def is_3d(self) -> bool:
        return self.z_size is not None


def _package_error(path, what: str) -> InputError:
    return InputError(f"{path}: {what}")


def read_package(path) -> ZooModel:
    """Read and check a model zoo package (zip, folder or ``rdf.yaml``) for prediction.

    Raises
    ------
    InputError
        Not a valid package (the spec library's first complaint), or a kind volseg
        cannot run: several inputs or outputs, a time or other axis, several input or
        output channels, no ONNX weights, an unsupported processing step.
    """
    descr = _load_description(path)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise _package_error(path, f"has {len(descr.inputs)} input(s) and "
                                   f"{len(descr.outputs)} output(s); volseg runs models with "
                                   "one image in and one probability out")
    inp, out = descr.inputs[0], descr.outputs[0]
    input_axes, in_sizes = _axes(path, inp, "input")
    output_axes, _ = _axes(path, out, "output")
    config = _volseg_config(descr)
    channels = in_sizes.get("channel", 1)
    if channels != 1 and (channels != config.get("context") or "z" in input_axes):
        raise _package_error(path, f"its input has {channels} channels; volseg runs models "
                                   "of one greyscale channel")
    if _output_sizes(out).get("channel", 1) != 1:
        raise _package_error(path, f"its output has {_output_sizes(out)['channel']} channels "
                                   "(instance or multi-class segmentation?); volseg runs "
                                   "models with one foreground-probability channel")
    fixed, lo, step = _space_size(path, inp, ("y", "x"))
    z_size = _space_size(path, inp, ("z",)) if "z" in input_axes else None
    _check_same_size(path, inp, out)
    halo = _declared_halo(out, ("y", "x"))
    weights = descr.weights
    if weights.onnx is None:
        formats = [k for k in type(weights).model_fields if getattr(weights, k) is not None]
        raise _package_error(path, f"holds weights as {', '.join(formats)}; volseg runs ONNX "
                                   "weights (onnxruntime): export the model to ONNX")
    onnx = weights.onnx.get_reader().read()
    threshold = float(config.get("threshold", 0.5))
    return ZooModel(
        path=str(path), name=str(descr.name), onnx=onnx, input_axes=input_axes,
        output_axes=output_axes, channels=channels,
        multiple=fixed or step, min_size=fixed or lo, fixed_size=fixed, halo=halo,
        threshold=threshold,
        preprocessing=_steps(path, inp.preprocessing, "preprocessing"),
        postprocessing=_steps(path, out.postprocessing, "postprocessing"),
        weights_sha256=hashlib.sha256(onnx).hexdigest(), z_size=z_size,
        z_halo=_declared_halo(out, ("z",)) if z_size is not None else None)


def _volseg_config(descr) -> dict:
    """The package's ``config.volseg`` (what volseg wrote into its own packages), or {}."""
    config = descr.config
    config = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    found = config.get("volseg")
    return dict(found) if isinstance(found, dict) else {}


def _load_description(path):
    from bioimageio.spec import InvalidDescr, load_description

    path = Path(path)
    if not path.exists():
        raise _package_error(path, "model package not found")
    missing = _missing_files(path)
    if missing:
        raise _package_error(path, f"its description lists {missing[0]!r}, which the package "
                                   "does not hold (a file left out when it was zipped?)")
    try:
        descr = load_description(path, perform_io_checks=True)
    except Exception as exc:  # the spec library raises ValueError, OSError, zip errors...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _package_error(path, f"not a readable model zoo package ({first[:200]})") from None
    if isinstance(descr, InvalidDescr):
        raise _package_error(path, "not a valid model zoo package: "
                                   f"{_first_error(descr.validation_summary)}")
    if getattr(descr, "type", None) != "model":
        raise _package_error(path, f"describes a {descr.type}, not a model")
    if not str(descr.format_version).startswith("0.5"):
        raise _package_error(path, f"uses model spec {descr.format_version}; volseg reads "
                                   "0.5 packages (update it with `bioimageio update-format`)")
    return descr


def _missing_files(path: Path) -> list[str]:
    """The files a package's YAML names as a ``source`` (weights, test tensors,
    documentation...) that it does not hold; URLs are the spec library's to check."""
    import yaml

    names = ("rdf.yaml", "bioimageio.yaml")
    try:
        if path.is_dir():
            found = [path / n for n in names if (path / n).is_file()]
            text, held = found[0].read_text(), None
        elif path.suffix.lower() in (".yaml", ".yml"):
            text, held = path.read_text(), None
        else:
            with zipfile.ZipFile(path) as zf:
                members = zf.namelist()
                yml = next(n for n in members if n.endswith(names))
                text, held = zf.read(yml).decode("utf-8"), set(members)
        description = yaml.safe_load(text)
    except Exception:  # unreadable: the spec library says what is wrong with it
        return []
    base = path if path.is_dir() else path.parent
    sources = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "source" and isinstance(value, str) and "://" not in value:
                    sources.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(description)
    if held is not None:
        return [s for s in sources if s.lstrip("./") not in held]
    return [s for s in sources if not (base / s).exists()]


def _first_error(summary) -> str:
    for detail in summary.details:
        for error in detail.errors:
            where = ".".join(str(p) for p in error.loc)
            return f"{where}: {error.msg}"[:300] if where else error.msg[:300]
    return "the spec library rejects it"


def _axes(path, tensor, what) -> tuple[tuple, dict]:
    """The tensor's axes as volseg names them, in order, and the sizes volseg needs."""
    names, sizes = [], {}
    for axis in tensor.axes:
        kind = axis.type
        if kind in ("batch", "channel"):
            names.append(kind)
            if kind == "channel":
                sizes["channel"] = len(axis.channel_names)
            continue
        if kind == "space" and str(axis.id) in ("z", "y", "x"):
            names.append(str(axis.id))
            continue
        raise _package_error(path, f"its {what} has a {kind} axis {str(axis.id)!r}; volseg "
                                   "runs models over y and x (with batch and channel)")
    if "y" not in names or "x" not in names:
        raise _package_error(path, f"its {what} lacks a y or x axis")
    return tuple(names), sizes


def _output_sizes(tensor) -> dict:
    return {"channel": len(a.channel_names) for a in tensor.axes if a.type == "channel"}


def _space_size(path, tensor, names) -> tuple[int | None, int, int]:
    """(fixed size or None, minimum, step) of the input's axes ``names`` (y and x must
    agree)."""
    found = set()
    for axis in tensor.axes:
        if axis.type != "space" or str(axis.id) not in names:
            continue
        size = axis.size
        if isinstance(size, int):
            found.add((size, size, 0))
        elif hasattr(size, "min") and hasattr(size, "step"):
            lo, step = int(size.min), int(size.step)
            found.add((None, lo, step) if step > 0 else (lo, lo, 0))
        else:
            raise _package_error(path, f"its input axis {axis.id} takes its size from another "
                                       "tensor; volseg needs y and x sizes of its own")
    if len(found) != 1:
        raise _package_error(path, "its input's y and x sizes follow different rules; volseg "
                                   "tiles with square rules only")
    fixed, lo, step = found.pop()
    return fixed, lo, step


def _check_same_size(path, inp, out) -> None:
    """The output's y and x are the input's, pixel for pixel: a tile's probabilities are
    blended back where its pixels came from (a network of unpadded convolutions, whose
    output is smaller, or one that changes the scale, is refused)."""
    sizes = {str(a.id): a.size for a in inp.axes if a.type == "space"}
    for axis in out.axes:
        if axis.type != "space":
            continue
        size, scale = axis.size, float(getattr(axis, "scale", 1.0) or 1.0)
        same = (getattr(size, "axis_id", None) is not None
                and str(size.axis_id) == str(axis.id) and int(size.offset or 0) == 0) \
            or (isinstance(size, int) and size == sizes.get(str(axis.id)))
        input_scale = next((float(a.scale or 1.0) for a in inp.axes
                            if a.type == "space" and str(a.id) == str(axis.id)), 1.0)
        if not same or scale != input_scale:
            raise _package_error(path, f"its output's {axis.id} axis is not the input's size "
                                       "and scale (a network that crops or resamples); "
                                       "volseg needs an output pixel for every input pixel")


def _declared_halo(tensor, names) -> int | None:
    halos = {int(getattr(a, "halo", 0) or 0) for a in tensor.axes
             if a.type == "space" and str(a.id) in names}
    halo = max(halos) if halos else 0
    return halo or None


def _steps(path, steps, what) -> list[dict]:
    """The pre/postprocessing steps as plain dicts; unsupported ones refused."""
    out = []
    for step in steps:
        kind = str(step.id)
        if kind not in PREPROCESSING:
            raise _package_error(path, f"its {what} uses {kind!r}, which volseg does not "
                                       f"apply (it does: {', '.join(PREPROCESSING)})")
        kwargs = step.kwargs.model_dump() if getattr(step, "kwargs", None) is not None else {}
        if kwargs.get("reference_tensor") is not None:
            raise _package_error(path, f"its {what} {kind!r} takes statistics from another "
                                       "tensor; volseg computes them on the image only")
        for key in ("gain", "offset", "mean", "std"):
            if isinstance(kwargs.get(key), (list, tuple)):
                values = kwargs[key]
                if len(values) != 1:
                    raise _package_error(path, f"its {what} {kind!r} has one {key} per "
                                               "channel; volseg runs one channel")
                kwargs[key] = values[0]
        out.append({"id": kind, **kwargs})
    return out


# --------------------------------------------------------------------------- running


def apply_steps(frames: np.ndarray, steps: list[dict], *,
                layout: tuple = ("batch", "y", "x", "channel")) -> np.ndarray:
    """Apply pre/postprocessing ``steps`` to float32 ``frames``, whose axes ``layout``
    names: (n, H, W[, K]) frames, or a 3D model's (1, H, W, Z) stack with layout
    ("batch", "y", "x", "z"). Statistics (``zero_mean_unit_variance``, ``scale_range``,
    percentile ``clip``) are taken over the step's ``axes`` (:func:`stat_axes`)."""
    x = np.asarray(frames, np.float32)
    layout = tuple(layout)[:x.ndim]
    for step in steps:
        kind = step["id"]
        per_frame = stat_axes(step, layout)
        if kind == "ensure_dtype":
            x = x.astype(np.float32 if "float" in str(step.get("dtype", "float32"))
                         else step["dtype"]).astype(np.float32)
        elif kind == "scale_linear":
            x = x * np.float32(step.get("gain", 1.0)) + np.float32(step.get("offset", 0.0))
        elif kind == "clip":
            lo, hi = step.get("min"), step.get("max")
            if step.get("min_percentile") is not None:
                lo = np.percentile(x, step["min_percentile"], axis=per_frame, keepdims=True)
            if step.get("max_percentile") is not None:
                hi = np.percentile(x, step["max_percentile"], axis=per_frame, keepdims=True)
            x = np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
        elif kind == "fixed_zero_mean_unit_variance":
            x = (x - np.float32(step["mean"])) / (np.float32(step["std"]) + np.float32(1e-6))
        elif kind == "zero_mean_unit_variance":
            mean = x.mean(axis=per_frame, keepdims=True, dtype=np.float64)
            std = x.std(axis=per_frame, keepdims=True, dtype=np.float64)
            x = ((x - mean) / (std + step.get("eps", 1e-6))).astype(np.float32)
        elif kind == "scale_range":
            lo = np.percentile(x, step.get("min_percentile", 0.0), axis=per_frame,
                               keepdims=True)
            hi = np.percentile(x, step.get("max_percentile", 100.0), axis=per_frame,
                               keepdims=True)
            x = ((x - lo) / (hi - lo + step.get("eps", 1e-6))).astype(np.float32)
        elif kind == "sigmoid":
            x = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
        elif kind == "binarize":
            x = (x > np.float32(step["threshold"])).astype(np.float32)
        x = np.asarray(x, np.float32)
    return x


def fixed_tile_step(size: int, halo: int) -> int:
    """Where tiles of a network of one fixed ``size`` start: at multiples of the largest
    power of two that divides ``size`` (its pooling grid, for a network that pools) and
    still leaves each tile, past an overlap of ``2 * halo`` rounded up to it, a step of
    its own. 1 when none does."""
    step = size & -size  # the largest power of two dividing size
    while step > 1 and -(-2 * halo // step) * step + step > size:
        step //= 2
    return max(step, 1)


def stat_axes(step: dict, layout: tuple) -> tuple:
    """The array axes a step's statistics reduce: its ``axes`` (the spec: the axes
    normalised jointly) where the array has them, else every axis but the batch (the
    spec's default, all axes, for one sample). Each frame, or a 3D model's stack, is one
    sample: statistics never mix frames."""
    names = [a for a in (step.get("axes") or ()) if a in layout and a != "batch"]
    if not names:
        return tuple(range(1, len(layout)))
    return tuple(sorted(layout.index(a) for a in names))


def whole_axes(package: "ZooModel") -> set:
    """The axes (of y, x and z) whose whole extent the package's preprocessing takes
    statistics over: blocks must not split them."""
    found = set()
    for step in package.preprocessing:
        if step["id"] in ("zero_mean_unit_variance", "scale_range") or (
                step["id"] == "clip" and (step.get("min_percentile") is not None
                                          or step.get("max_percentile") is not None)):
            names = step.get("axes") or ("z", "y", "x")
            found |= {a for a in names if a in ("z", "y", "x")}
    return found

def run_tiles(sess, model: ZooModel, batch: np.ndarray) -> np.ndarray:
    """The network's output for a (b, H, W, K) batch of preprocessed tiles, one tile per
    call, postprocessed, as (b, H, W) float32; for a 3D model K is the window's z-slices
    and the output (b, H, W, K), one probability per slice."""
    name = sess.get_inputs()[0].name
    outs = []
    for k in range(len(batch)):
        tile = _to_axes(batch[k:k + 1], model.input_axes)
        y = np.asarray(sess.run(None, {name: tile})[0], np.float32)
        outs.append(_from_axes(y, model.output_axes))
    layout = ("batch", "y", "x", "z") if model.is_3d else ("batch", "y", "x", "channel")
    return apply_steps(np.concatenate(outs), model.postprocessing, layout=layout)


def _to_axes(tile: np.ndarray, axes: tuple) -> np.ndarray:
    """A (1, H, W, K) tile in the order of the model's input ``axes``: K is the channels of
    a 2D model, the z-slices of a 3D one (whose one channel is added); a batch or channel
    axis the model does not have is dropped."""
    have = ["batch", "y", "x", "z" if "z" in axes else "channel"]
    x = tile
    if "z" in axes and "channel" in axes:
        x, have = x[..., None], have + ["channel"]
    for name in ("channel", "batch"):
        if name in have and name not in axes:
            x = np.take(x, 0, axis=have.index(name))
            have.remove(name)
    return np.ascontiguousarray(np.transpose(x, [have.index(a) for a in axes]))


def _from_axes(y: np.ndarray, axes: tuple) -> np.ndarray:
    """The model's output in ``axes`` order as (1, H, W), or (1, H, W, Z) for a 3D model."""
    want = [a for a in ("batch", "y", "x", "z", "channel") if a in axes]
    y = np.transpose(y, [axes.index(a) for a in want])
    if "channel" in axes:
        y = y[..., 0]
    if "batch" not in axes:
        y = y[None]
    return y


def measure_halo(run, *, multiple: int, min_size: int, depth: int = 1, seed: int = 0,
                 fixed: int | None = None) -> int:
    """The smallest halo (a multiple of ``multiple``) at which a tile's centre matches the
    same pixels predicted with all their context, to half a uint8 step, on noise.

    ``run`` maps a (1, H, W, depth) float32 batch of preprocessed values to (1, H, W), or
    to (1, H, W, depth) for a 3D model (whose middle slice is compared; ``depth`` is a z
    size it takes). A package that declares no halo gets this, with a warning: noise is
    not the user's images, so it is an estimate. A network of one ``fixed`` size sees
    only tiles of that size: see :func:`_measure_fixed_halo`.
    """
    if fixed is not None:
        return _measure_fixed_halo(run, fixed=fixed, depth=depth, seed=seed)
    step = max(multiple, 1)
    centre = max(step, -(-16 // step) * step)
    big = centre + 2 * MAX_MEASURED_HALO
    big = max(big, -(-min_size // step) * step)
    rng = np.random.default_rng(seed)
    frame = rng.normal(size=(1, big, big, depth)).astype(np.float32)
    middle = run if depth == 1 else (lambda b: run(b)[..., depth // 2])
    whole = middle(frame)[0]
    c0 = (big - centre) // 2
    want = whole[c0:c0 + centre, c0:c0 + centre]
    halo = 0
    while halo < MAX_MEASURED_HALO:
        side = centre + 2 * halo
        if side >= min_size:
            a = c0 - halo
            got = middle(frame[:, a:a + side, a:a + side])[0][halo:halo + centre,
                                                           halo:halo + centre]
            if float(np.abs(got - want).max()) < 0.5 / 255:
                return halo
        halo += step
    return MAX_MEASURED_HALO


def _measure_fixed_halo(run, *, fixed: int, depth: int = 1, seed: int = 0) -> int:
    """:func:`measure_halo` for a network that takes tiles of exactly ``fixed`` px: the
    smallest distance from a tile's top-left border at which a small square's output
    matches the same square predicted in the middle of a tile (the most context that
    size gives). Tiles start on the network's presumed pooling grid (the largest power
    of two dividing ``fixed``, at most 16 and an eighth of ``fixed``), so the distances
    are multiples of it."""
    grid = max(1, min(fixed & -fixed, 16, fixed // 8))
    centre = grid
    most = (fixed - centre) // 2 // grid * grid
    rng = np.random.default_rng(seed)
    frame = rng.normal(size=(1, 2 * fixed, 2 * fixed, depth)).astype(np.float32)
    middle = run if depth == 1 else (lambda b: run(b)[..., depth // 2])
    q = fixed  # the square's top-left corner in the noise frame

    def square(offset):  # the square seen from a tile that starts ``offset`` px before it
        a = q - offset
        return middle(frame[:, a:a + fixed, a:a + fixed])[0][offset:offset + centre,
                                                             offset:offset + centre]

    want = square(most)
    for halo in range(0, most, grid):
        if float(np.abs(square(halo) - want).max()) < 0.5 / 255:
            return halo
    return most


def package_sha256(path, package: ZooModel) -> str:
    """What identifies a package for resuming and caching: the SHA-256 of its file (a
    zip or rdf.yaml) or of a folder's files, with its ONNX weights'."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    digest.update(package.weights_sha256.encode())
    return digest.hexdigest()


def finite_probability(values: np.ndarray) -> bool:
    """Whether a network's (postprocessed) output is a probability: finite, in [0, 1]."""
    return bool(np.isfinite(values).all()) and (values.size == 0 or
                                                (values.min() >= 0 and values.max() <= 1))



# --------------------------------------------------------------------------- writing


def bare_network(model):
    """``model`` (a volseg U-Net, float32) with its normalisation layer made the identity
    and the same weights: the network a package holds, the normalisation going into the
    package's preprocessing instead."""
    from volseg.models.backend import import_keras

    keras = import_keras()
    config = model.get_config()
    for layer in config["layers"]:
        if layer.get("name") == "normalize" or layer["config"].get("name") == "normalize":
            layer["config"]["scale"], layer["config"]["offset"] = 1.0, 0.0
    bare = keras.Model.from_config(config)
    bare.set_weights(model.get_weights())
    return bare


def write_package(out, *, network, name: str, description: str, authors: list[str],
                  license: str, gain: float, offset: float, halo: int, multiple: int,
                  test_input: np.ndarray, test_output: np.ndarray, cover: np.ndarray,
                  documentation: str, config: dict, tags: list[str]) -> Path:
    """Write a model zoo package (spec 0.5) of ``network`` to ``out`` (a .zip), atomically.

    ``network`` takes preprocessed values (``raw * gain + offset``); ``test_input`` holds
    raw intensities (1, H, W, K), ``test_output`` the probabilities (1, H, W, 1) the source
    model gives for it; ``cover`` an RGB uint8 image. Checks that the ONNX weights
    reproduce ``test_output`` before the package is written.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    from volseg.models.backend import import_keras

    keras = import_keras()
    out = Path(out)
    channels = int(test_input.shape[-1])
    with tempfile.TemporaryDirectory(prefix=".volseg-package-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        onnx = keras_to_onnx(network)
        (tmp / "weights.onnx").write_bytes(onnx)
        network.save(tmp / "weights.keras")
        got = run_tiles(session(onnx, 2), _writer_model(channels),
                        apply_steps(test_input[..., :], [{"id": "scale_linear", "gain": gain,
                                                          "offset": offset}]))
        worst = float(np.abs(got - test_output[..., 0]).max())
        if worst > 1e-4:
            raise RuntimeError(f"the ONNX export differs from the Keras network by {worst:g}")
        np.save(tmp / "test_input.npy", test_input.astype(np.float32))
        np.save(tmp / "test_output.npy", test_output.astype(np.float32))
        from PIL import Image

        Image.fromarray(cover).save(tmp / "cover.png")
        (tmp / "README.md").write_text(documentation, encoding="utf-8")
        import onnx as onnx_lib

        opset = max(o.version for o in onnx_lib.load_model_from_string(onnx).opset_import
                    if o.domain in ("", "ai.onnx"))
        size = spec.ParameterizedSize(min=max(multiple, 2 * halo + multiple), step=multiple)
        in_axes = [spec.BatchAxis(),
                   spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
                   spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
                   spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in
                                                   _channel_names(channels)])]
        ref = lambda a: spec.SizeReference(tensor_id=spec.TensorId("raw"),  # noqa: E731
                                           axis_id=spec.AxisId(a))
        out_axes = [spec.BatchAxis(),
                    spec.SpaceOutputAxisWithHalo(id=spec.AxisId("y"), size=ref("y"), halo=halo),
                    spec.SpaceOutputAxisWithHalo(id=spec.AxisId("x"), size=ref("x"), halo=halo),
                    spec.ChannelAxis(channel_names=[spec.Identifier("probability")])]
        descr = _described(spec.ModelDescr,
            name=name, description=description,
            authors=[spec.Author(name=a) for a in authors],
            cite=[spec.CiteEntry(text=UNET_CITATION["text"], doi=spec.Doi(UNET_CITATION["doi"]))],
            license=spec.LicenseId(license),
            documentation=spec.FileDescr(source=tmp / "README.md"),
            covers=[spec.FileDescr(source=tmp / "cover.png")],
            tags=tags,
            inputs=[spec.InputTensorDescr(
                id=spec.TensorId("raw"), axes=in_axes,
                description="raw intensities" + (f" of {channels} consecutive z-slices, the "
                                                  "middle one segmented" if channels > 1 else ""),
                test_tensor=spec.FileDescr(source=tmp / "test_input.npy"),
                data=spec.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=[
                    spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                    spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(
                        gain=float(gain), offset=float(offset)))])],
            outputs=[spec.OutputTensorDescr(
                id=spec.TensorId("probability"), axes=out_axes,
                description="probability of the structure; threshold it at "
                            f"{config['threshold']} (config.volseg.threshold)",
                test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
                data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
            weights=spec.WeightsDescr(
                onnx=spec.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=opset,
                                           parent="keras_v3"),
                keras_v3=spec.KerasV3WeightsDescr(
                    source=tmp / "weights.keras", keras_version=keras.__version__,
                    backend=(keras.backend.backend(), _backend_version(keras)))),
            config={"volseg": config})
        partial = tmp / out.name
        save_bioimageio_package(descr, output_path=partial)
        check = _load_description(partial)  # what a consumer reads back
        if check.weights.onnx is None or check.weights.keras_v3 is None:
            raise RuntimeError("the written package lost a weights format")
        os.replace(partial, out)
    return out


def check_name(name: str) -> None:
    """:class:`InputError` naming ``name`` unless the spec takes it as a package name
    (5 to 128 letters, digits, spaces and ``_+-()``), checked before any work."""
    from typing import Annotated

    import pydantic
    from bioimageio.spec.model import v0_5 as spec

    field = spec.ModelDescr.model_fields["name"]
    try:
        pydantic.TypeAdapter(Annotated[field.annotation, *field.metadata]).validate_python(name)
    except pydantic.ValidationError as exc:
        raise InputError(f"{name!r} is not a package name for the model zoo spec "
                         f"({exc.errors()[0]['msg']}; 5 to 128 letters, digits, spaces and "
                         "_+-())", param="name") from None


def _described(cls, **fields):
    """``cls(**fields)``; the spec's complaint about a field the user chose (name, authors,
    licence) as an :class:`InputError` naming it."""
    import pydantic

    try:
        return cls(**fields)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = str(error["loc"][0]) if error["loc"] else ""
        if where in ("name", "authors", "license"):
            raise InputError(f"the model zoo spec refuses it: {error['msg']}",
                             param=where) from None
        raise


def _writer_model(channels: int) -> ZooModel:
    """The axes of a package volseg writes (batch, y, x, channel), for checking it."""
    return ZooModel(path="", name="", onnx=b"", input_axes=("batch", "y", "x", "channel"),
                    output_axes=("batch", "y", "x", "channel"), channels=channels, multiple=1,
                    min_size=1, fixed_size=None, halo=None, threshold=0.5, preprocessing=[],
                    postprocessing=[], weights_sha256="")


def _channel_names(channels: int) -> list[str]:
    if channels == 1:
        return ["raw"]
    r = (channels - 1) // 2
    return [f"z_minus_{-d}" if d < 0 else ("z" if d == 0 else f"z_plus_{d}")
            for d in range(-r, r + 1)]


def _backend_version(keras) -> str:
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    import importlib

    return importlib.import_module(module).__version__

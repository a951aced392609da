"""The U-Net and the volseg model file.

A volseg model file is a normal Keras 3 ``.keras`` archive (config + weights, loadable by
``keras.saving.load_model`` under the TensorFlow, JAX or PyTorch backend) with one extra
zip member, ``volseg.json``, holding what the rest of volseg needs to use it: the input
multiple, the suggested tile margin, the probability threshold, the intensity
normalisation, the training parameters and where the training data came from.

The intensity normalisation is also *inside* the network (its first layer is a
``keras.layers.Rescaling`` from raw intensities to [0, 1]), so anyone who loads the file
with plain Keras and feeds raw pixel values gets the same output as volseg.

Keras is imported lazily so that reading a model's metadata (``read_model_info``) stays
cheap and does not start TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from volseg.errors import InputError

#: Precisions a model trains or predicts in, and the Keras dtype policy of each: bfloat16
#: is mixed (float32 weights and outputs, bfloat16 compute).
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
#: What users may ask for: a precision, or "auto" (see :func:`resolve_precision`).
PRECISION_CHOICES = ("auto", *PRECISIONS)

#: Name of the zip member holding volseg's metadata inside a ``.keras`` archive.
INFO_MEMBER = "volseg.json"
FORMAT = "volseg-model"
FORMAT_VERSION = 1


def receptive_field(depth: int = 4) -> int:
    """Theoretical receptive field (pixels, one side to the other) of ``build_unet``.

    Each 3x3 convolution at resolution level ``l`` (stride ``2**l``) widens the field by
    ``2 * 2**l``; each 2x2 pooling from level ``l`` by ``2**l``; each 3x3 stride-2
    transposed convolution into level ``l`` by ``2 * 2**l``. For depth 4 this is 230 px.
    """
    field = 1
    for level in range(depth):
        field += 2 * (2 * 2**level)  # two convolutions in the contracting block
        field += 2**level  # 2x2 max pooling
        field += 2 * 2**level  # 3x3 transposed convolution back to this level
        field += 2 * (2 * 2**level)  # two convolutions in the expanding block
    field += 2 * (2 * 2**depth)  # bottleneck block
    return field


def default_margin(depth: int = 4) -> int:
    """Suggested tile halo in pixels for a U-Net of ``depth`` levels.

    The theoretical receptive field is 230 px at depth 4 (115 px each side, see
    :func:`receptive_field`), but a trained U-Net's *effective* receptive field is
    concentrated near its centre: the weight of distant pixels decays quickly. Measured
    on CHASE_DB1 validation frames (960 x 999) with a U-Net trained by ``volseg train``,
    512 px tiles blended by :mod:`volseg.ops.tiling` changed 0.10 % of mask pixels against
    whole-frame prediction with a 16 px halo, 0.04 % with 32 and 0.02 % with 48 (256 px
    tiles: 0.30, 0.17, 0.04 %); benchmarks/bench_train.py prints this check. 32 px
    keeps that under 0.05 % on 512 px or larger tiles while the overlap costs only
    (1024 / 960)^2 = 1.14x on 1024 px tiles (1.23x with 48). Callers wanting
    more can use ``receptive_field // 2``, stored beside it. The halo is
    rounded up to a multiple of ``2**depth`` so tile origins stay on the pooling grid:
    every 2x2 pooling window of a tile is then one of the whole frame's windows.
    """
    multiple = 2**depth
    want = 32
    return max(multiple, -(-want // multiple) * multiple)


def build_unet(*, base_filters: int = 16, depth: int = 4, dropout: float = 0.1,
               batch_norm: bool = True, normalization: tuple[float, float] = (0.0, 255.0),
               channels: int = 1, batch_norm_momentum: float = 0.99,
               name: str = "volseg_unet"):
    """Build the report's U-Net for 2D frames (one channel, or K context slices).

    Parameters
    ----------
    base_filters : int
        Filters of the first level; each deeper level doubles them (16, 32, 64, 128,
        bottleneck 256 for the defaults).
    depth : int
        Number of poolings. Input height and width must be multiples of ``2**depth``.
    dropout : float
        Dropout rate after each pooling and after each skip concatenation (0 disables).
    batch_norm : bool
        Batch normalisation after every 3x3 convolution.
    normalization : (low, high)
        Raw intensities mapped to 0 and 1 by the first layer (a ``Rescaling``), so the
        model takes raw pixel values. ``high`` must be greater than ``low``. The same
        range applies to every channel.
    channels : int
        Input channels: K, the z-slices of depth context (:mod:`volseg.ops.context`).
    batch_norm_momentum : float
        Momentum of the batch-normalisation moving statistics (training only; Keras'
        default 0.99).
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Input ``(None, None, channels)`` float32 raw intensities, output ``(None, None, 1)``
        sigmoid probabilities (float32 even under a mixed-precision policy).

    Notes
    -----
    Only ``keras.layers`` are used (no backend-specific ops), so the saved model loads
    and runs under any Keras 3 backend with ``safe_mode=True``.
    """
    from volseg.models.backend import import_keras

    keras = import_keras()
    from keras import layers

    low, high = float(normalization[0]), float(normalization[1])
    if not high > low:
        raise ValueError(f"normalization: high ({high}) must be greater than low ({low})")
    if depth < 1 or base_filters < 1:
        raise ValueError("depth and base_filters must be positive")

    def conv_block(x, filters, prefix):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                              name=f"{prefix}_conv{i}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=batch_norm_momentum,
                                              name=f"{prefix}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
        return x

    inputs = keras.Input(shape=(None, None, int(channels)), dtype="float32", name="image")
    # Scaling in float32 whatever the global policy: uint16 raw values would lose
    # precision if bfloat16 came before the division.
    x = layers.Rescaling(scale=1.0 / (high - low), offset=-low / (high - low),
                         dtype="float32", name="normalize")(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"down{level}_drop")(x)
    x = conv_block(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 3, strides=2, padding="same",
                                   name=f"up{level}_upconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        if dropout:
            x = layers.Dropout(dropout, name=f"up{level}_drop")(x)
        x = conv_block(x, base_filters * 2**level, f"up{level}")
    # Sigmoid in float32: bfloat16 probabilities would only have ~3 significant digits.
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32",
                            name="probability")(x)
    return keras.Model(inputs, outputs, name=name)


def model_normalization(model) -> tuple[float, float]:
    """The (low, high) raw intensities that ``model``'s Rescaling layer maps to (0, 1)."""
    layer = model.get_layer("normalize")
    scale, offset = float(layer.scale), float(layer.offset)
    low = -offset / scale
    return low, low + 1.0 / scale


def base_info(*, depth: int, base_filters: int, dropout: float, batch_norm: bool,
              normalization: tuple[float, float], patch=(256, 256), threshold: float = 0.5,
              input_dtype: str = "uint8", training: dict | None = None,
              provenance: dict | None = None, context: int = 1) -> dict:
    """The ``volseg.json`` record for a model with these parameters (see ``save_model``).

    ``context`` is K, the z-slices the model takes as channels (:mod:`volseg.ops.context`);
    a model file without the key takes one (:func:`model_context`).
    """
    from volseg.version import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "volseg_version": __version__,
        "multiple": 2**depth,
        "margin": default_margin(depth),
        "receptive_field": receptive_field(depth),
        "threshold": float(threshold),
        "patch": [int(patch[0]), int(patch[1])],
        "normalization": {"low": float(normalization[0]), "high": float(normalization[1])},
        "input_dtype": str(input_dtype),
        "context": int(context),
        "architecture": {"base_filters": int(base_filters), "depth": int(depth),
                         "dropout": float(dropout), "batch_norm": bool(batch_norm)},
        "training": dict(training or {}),
        "provenance": dict(provenance or {}),
    }


def model_context(info: dict) -> int:
    """K, the z-slices a model takes as channels: its info's ``context``, 1 for models
    written before the key existed (and for forests)."""
    return int(info.get("context", 1))


def _tmp_path(path: Path) -> Path:
    # Same folder (so os.replace is atomic) and a .keras suffix (Keras insists on it).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")


def save_model(model, path, *, info: dict) -> None:
    """Write ``model`` to ``path`` as a ``.keras`` archive with ``info`` as volseg.json.

    Parameters
    ----------
    model : keras.Model
    path : str or Path
        Destination; must end in ``.keras``. Replaced atomically: readers see the old
        file or the complete new one, never half of one.
    info : dict
        Metadata, at least ``format``, ``format_version``, ``multiple``, ``margin``,
        ``threshold``, ``patch``, ``normalization``, ``input_dtype``, ``architecture``,
        ``training``, ``provenance`` (``base_info`` builds one).
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise InputError(f"{path}: model files must end in .keras")
    info = dict(info)
    info.setdefault("format", FORMAT)
    info.setdefault("format_version", FORMAT_VERSION)
    if info["format"] != FORMAT:
        raise ValueError(f"info['format'] must be {FORMAT!r}")
    info["weights_sha256"] = weights_digest(model)  # checked by load_model
    payload = json.dumps(info, indent=2, sort_keys=True, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(INFO_MEMBER, payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(value):
    # numpy scalars and paths sneak into parameter dicts.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def read_model_info(path) -> dict:
    """Read only the volseg metadata of a model file (no Keras import).

    Raises
    ------
    InputError
        If the file is missing, is not a zip (``.keras``) archive, or has no valid
        ``volseg.json`` ("not a volseg model").
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a model file")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a model: volseg models (.keras, forests) and model "
                         "zoo packages (.zip) are zip archives, and this file is not one "
                         "(damaged, cut short, or another kind of file)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if INFO_MEMBER not in names:
                zoo = any(n.endswith(("rdf.yaml", "bioimageio.yaml")) for n in names)
                raise InputError(f"{path}: " + (
                    "a model zoo package named like a volseg model; give it a .zip name"
                    if zoo else f"not a volseg model (an archive without {INFO_MEMBER}; "
                    "train one with `volseg train`)"))
            info = json.loads(zf.read(INFO_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable model archive ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(f"{path}: not a volseg model ({INFO_MEMBER} has no "
                         f"format={FORMAT!r})")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path}: volseg model format version "
                         f"{info.get('format_version')} is newer than this volseg "
                         f"understands ({FORMAT_VERSION}); upgrade volseg")
    return info


def load_model(path, *, precision: str | None = None):
    """Load a volseg model file safely.

    Parameters
    ----------
    path : str or Path
        A ``.keras`` file written by ``save_model``.
    precision : None, "float32" or "bfloat16"
        None keeps the dtype policy stored in the file. "bfloat16" rebuilds the network
        under the ``mixed_bfloat16`` policy (1.5x faster inference on AVX-512 BF16
        CPUs) with the same weights; "float32" rebuilds it in float32.

    Returns
    -------
    (keras.Model, dict)
        The uncompiled model and its volseg.json metadata.

    Raises
    ------
    InputError
        Missing, corrupt or non-volseg files (one clear line).
    """
    path = Path(path)
    info = read_model_info(path)
    if path.suffix != ".keras":
        raise InputError(f"{path}: model files must end in .keras (rename it)")
    from volseg.models.backend import import_keras

    keras = import_keras()

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError/KeyError/OSError variously
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot load the Keras model ({first[:200]})") from None
    check_model(model, info, path)
    if precision is not None:
        model = with_precision(model, precision, info=info)
    return model, info


def weights_digest(model) -> str:
    """SHA-256 of the network's weights (shapes and float32 values, in order): what the
    model file's record says the weights are."""
    import numpy as np

    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w, dtype=np.float32)
        digest.update(repr(w.shape).encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


def check_record(info: dict, path) -> None:
    """What a model's record must hold to be used at all, checked before any network is
    loaded (any kind of model): a threshold that is a probability."""
    import math

    threshold = info.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"{path}: its record gives threshold {threshold!r}, not a "
                         "probability in [0, 1]; the model record is damaged")


def check_model(model, info: dict, path) -> None:
    """Refuse a model that cannot be trusted, before it computes anything.

    Its weights are finite and are the ones its record names (``weights_sha256``, in
    files written since the check exists: flipped bytes with a recomputed zip checksum
    are caught); the record fits the network (depth context = input channels, a
    threshold in [0, 1]); and the network's output on a probe tile is a finite
    probability. :class:`InputError` naming the file and what is wrong.
    """
    import numpy as np

    check_record(info, path)
    weights = model.get_weights()
    if not all(np.isfinite(w).all() for w in weights):
        raise InputError(f"{path}: the network's weights hold NaN or infinite values (a "
                         "damaged or diverged model); retrain it or restore a backup")
    recorded = info.get("weights_sha256")
    if recorded is not None and recorded != weights_digest(model):
        raise InputError(f"{path}: the weights differ from those its record names (the file "
                         "was damaged or changed after training); restore a backup")
    channels = int(model.inputs[0].shape[-1])
    if model_context(info) != channels:
        raise InputError(f"{path}: its record says depth context {model_context(info)} but "
                         f"the network takes {channels} input channel(s); the model record "
                         "is damaged")
    side = 2 * int(info.get("multiple", 2 ** int((info.get("architecture") or {})
                                                 .get("depth", 4))))
    low, high = model_normalization(model)
    probe = np.linspace(low, high, side * side * channels, dtype=np.float32)
    out = np.asarray(model(probe.reshape(1, side, side, channels), training=False))
    if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise InputError(f"{path}: the network's output on a probe tile is not a finite "
                         "probability (NaN, infinite or outside [0, 1]); the model is damaged")


def check_precision(precision: str) -> None:
    """:class:`InputError` naming ``precision`` unless it is one of
    :data:`PRECISION_CHOICES`."""
    if precision not in PRECISION_CHOICES:
        raise InputError(f"must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}",
                         param="precision")


#: How a training step is compiled: "graph" (TensorFlow's graph, oneDNN kernels), "xla"
#: (one fused XLA program), or "auto" (see :func:`resolve_compile`).
COMPILE_CHOICES = ("auto", "graph", "xla")
#: oneDNN's ISA names, lowest first, and the CPU flags each one rules out.
_ONEDNN_CAPS = {"SSE41": ("avx", "avx2", "avx512", "amx"), "AVX": ("avx2", "avx512", "amx"),
                "AVX2": ("avx512", "amx"), "AVX2_VNNI": ("avx512", "amx"),
                "AVX512_CORE": ("avx512_bf16", "avx512_fp16", "amx"),
                "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "amx"),
                "AVX512_CORE_BF16": ("amx",), "AVX10_1_512": ("amx",)}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere), less those that
    ``ONEDNN_MAX_CPU_ISA`` rules out (e.g. ``AVX2`` makes an AVX-512 machine behave as an
    AVX2 one, in oneDNN's kernels and in every choice volseg makes from these flags)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    ruled_out = _ONEDNN_CAPS.get(cap, ())
    return {f for f in flags if not f.startswith(ruled_out)}


def cpu_isa(flags=None) -> str:
    """The widest vector instruction set of the CPU, as users know it: ``"AMX"``,
    ``"AVX-512 BF16"``, ``"AVX-512"``, ``"AVX2"``, ``"AVX"`` or ``"SSE"``."""
    flags = cpu_flags() if flags is None else set(flags)
    for name, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"),
                       ("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx")):
        if flag in flags:
            return name
    return "SSE"


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; the platform's answer elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine() -> str:
    """What computes here, as the training line and the model's record say it: the GPUs,
    or the CPU's model and widest vector instruction set."""
    gpus = gpu_capabilities()
    return f"{len(gpus)} GPU(s)" if gpus else f"{cpu_model()} ({cpu_isa()})"


def keras_backend_name() -> str:
    """The Keras backend of this process: the imported one, else the one Keras will pick
    from ``KERAS_BACKEND`` (TensorFlow by default), without importing Keras."""
    import sys

    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def resolve_compile(compile: str, precision: str, *, flags=None, gpus=None,
                    backend: str | None = None) -> str:
    """``"auto"`` -> how this machine trains fastest: ``"xla"`` for float32 on a CPU
    without AVX-512, ``"graph"`` elsewhere; always ``"xla"`` on the JAX backend.

    TensorFlow's wheels build their element-wise kernels (batch norm, activations, the
    loss) for AVX only, and only the convolutions (oneDNN) use wider vectors; XLA fuses
    the element-wise work and compiles it for this CPU. On an AVX2 CPU that made the
    default training step 1.3-1.5x faster; on an AVX-512 one, where oneDNN's wide
    convolutions dominate, XLA-compiled training was much slower, and XLA computes
    bfloat16 without native support (docs/decisions.md, "Training step").

    JAX has no graph of its own: a step it does not compile with XLA runs op by op,
    4.3x slower on a CPU here, so on JAX "graph" (TensorFlow's) means "xla" too.
    """
    if compile not in COMPILE_CHOICES:
        raise InputError(f"must be one of {', '.join(COMPILE_CHOICES)}, not {compile!r}",
                         param="compile")
    if (backend or keras_backend_name()) == "jax":
        return "xla"
    if compile != "auto":
        return compile
    gpus = gpu_capabilities() if gpus is None else gpus
    flags = cpu_flags() if flags is None else set(flags)
    if gpus or precision != "float32" or "avx512f" in flags:
        return "graph"
    return "xla"


def gpu_capabilities() -> list[tuple[int, int]]:
    """CUDA compute capabilities of the GPUs the Keras backend sees (empty: none).

    Asks the backend that is already imported, so it costs nothing on a CPU machine.
    """
    import sys

    found: list[tuple[int, int]] = []
    try:
        if "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            for dev in tf.config.list_physical_devices("GPU"):
                cc = tf.config.experimental.get_device_details(dev).get("compute_capability")
                found.append(tuple(cc) if cc else (0, 0))
        elif "jax" in sys.modules:
            for dev in sys.modules["jax"].devices():
                if dev.platform == "gpu":
                    cc = str(getattr(dev, "compute_capability", "0.0")).split(".")
                    found.append((int(cc[0]), int(cc[1]) if len(cc) > 1 else 0))
        elif "torch" in sys.modules:
            torch = sys.modules["torch"]
            for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
                found.append(tuple(torch.cuda.get_device_capability(i)))
    except Exception:  # a backend without GPU support answers in its own ways
        return found
    return found


def native_bf16(*, flags=None, gpus=None) -> bool:
    """The hardware computes bfloat16 natively: a GPU of compute capability 8.0 or newer
    (Ampere, Hopper ...), or a CPU with AVX-512 BF16 or AMX. Elsewhere bfloat16 is
    emulated and slower than float32 (docs/decisions.md, "predict")."""
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        return all(cc >= (8, 0) for cc in gpus)
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: str, *, flags=None, gpus=None) -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`native_bf16`, else ``"float32"``."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bfloat16" if native_bf16(flags=flags, gpus=gpus) else "float32"


def with_precision(model, precision: str, *, info: dict | None = None):
    """Return a copy of ``model`` built under ``precision`` ("float32" or "bfloat16")."""
    from volseg.models.backend import import_keras

    keras = import_keras()

    check_precision(precision)
    arch = (info or {}).get("architecture")
    if arch is None:
        raise ValueError("with_precision needs the model's volseg info (architecture)")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        clone = build_unet(base_filters=arch["base_filters"], depth=arch["depth"],
                           dropout=arch["dropout"], batch_norm=arch["batch_norm"],
                           normalization=model_normalization(model),
                           channels=int(model.inputs[0].shape[-1]), name=model.name)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def update_model_info(path, **changes) -> dict:
    """Rewrite ``volseg.json`` of the model file at ``path`` with ``changes`` applied.

    Top-level keys are replaced (e.g. ``threshold=0.42``); the file is rewritten
    atomically. Returns the new info.
    """
    path = Path(path)
    info = read_model_info(path)
    info.update(changes)
    payload = json.dumps(info, indent=2, sort_keys=True, default=_json_default)
    tmp = _tmp_path(path)
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for item in src.infolist():
                if item.filename != INFO_MEMBER:
                    dst.writestr(item, src.read(item.filename))
            dst.writestr(INFO_MEMBER, payload, compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return info


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (recorded in prediction provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_parameters(model) -> int:
    """Total number of weights (trainable and not)."""
    return int(sum(int(w.size) for w in model.get_weights()))

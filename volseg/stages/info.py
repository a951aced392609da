"""A description of a volseg store (for `volseg info`)."""

from __future__ import annotations

import numpy as np

from volseg.io import store as st
from volseg.io.integrity import Damage


def _describe_array(name: str, image: st.ImageStore) -> dict:
    arr = image.array
    raw = int(np.prod(arr.shape)) * arr.dtype.itemsize
    ngff = image.ngff
    stored = st.stored_bytes(image.path / ngff.path)
    codecs = [type(c).__name__ + (f"({getattr(c.cname, 'value', c.cname)}, level {c.clevel})"
                                        if hasattr(c, "cname") else "")
              for c in arr.compressors]
    attrs = {k: v for k, v in image.volseg.items()
             if k not in ("job", "complete", "version", "created", "finished", "integrity")}
    missing = arr.missing_frames() if image.complete else frozenset()
    return {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards else None, "codec": ", ".join(codecs) or "none",
            "raw_bytes": raw, "stored_bytes": stored, "ratio": raw / max(stored, 1),
            "complete": image.complete, "made_by_volseg": image.made_by_volseg,
            "attributes": attrs, "scale": list(image.scale), "units": image.units,
            "stored_as": None if image.made_by_volseg else _stored_as(ngff, image.channel),
            "integrity": "every chunk written, CRC32C (info sees that shards exist; "
                         "`volseg verify` reads and checks them)" if image.checksummed else
                         "not recorded (missing chunks cannot be detected)",
            "damage": Damage(missing, missing).describe(arr.label) if missing else None}


def _stored_as(ngff, channel) -> str:
    """Another tool's layout in words: what volseg reads from where."""
    text = f"NGFF {ngff.version or '?'}, array {ngff.path!r}, axes {''.join(ngff.axes)}"
    return text + (f", channel {channel}" if channel is not None and "c" in ngff.axes else "")


def describe_model(path) -> dict:
    """Kind, threshold, inputs, training record and provenance of a model file."""
    from pathlib import Path

    from volseg.models.unet import read_model_info

    info = read_model_info(path)
    kind = info.get("kind", "unet")
    if kind == "forest":
        detail = {"features": info.get("features")}
    else:
        detail = {"architecture": info.get("architecture"), "patch": info.get("patch"),
                  "margin": info.get("margin"), "context": int(info.get("context", 1))}
    return {"path": str(path), "kind": f"{kind} model", "bytes": Path(path).stat().st_size,
            "threshold": info.get("threshold"), "input_dtype": info.get("input_dtype"),
            "normalization": info.get("normalization"), **detail,
            "training": info.get("training"), "provenance": info.get("provenance"),
            "volseg_version": info.get("volseg_version")}


def describe_package(path) -> dict:
    """What predict would run of a BioImage Model Zoo package (:mod:`volseg.models.zoo`):
    its name, tensors' axes, halo and steps; refused in one line if predict cannot run it."""
    from pathlib import Path

    from volseg.models import zoo

    package = zoo.read_package(path)
    path = Path(path)
    size = path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())
    steps = lambda s: ", ".join(step["id"] for step in s) or "none"  # noqa: E731
    sizes = (f"exactly {package.fixed_size} px" if package.fixed_size else
             f"at least {package.min_size} px in steps of {package.multiple}")
    if package.is_3d:
        fixed, minimum, step = package.z_size
        sizes += (f"; 3D, z windows of {fixed} slices" if fixed else
                  f"; 3D, z windows of at least {minimum} slices" +
                  (f" in steps of {step}" if step else ""))
        sizes += (f", z halo {package.z_halo}" if package.z_halo is not None else
                  ", z halo not declared (predict uses the y/x halo)")
    return {"path": str(path), "kind": "zoo package model", "bytes": size,
            "threshold": package.threshold, "input_dtype": "float32 (ONNX Runtime)",
            "normalization": f"preprocessing {steps(package.preprocessing)}; postprocessing "
                             f"{steps(package.postprocessing)}",
            "architecture": f"{package.name!r}, input axes {','.join(package.input_axes)}, "
                            f"output axes {','.join(package.output_axes)}, tiles {sizes}",
            "margin": package.halo if package.halo is not None else
            "not declared (predict measures one)",
            "context": package.channels, "training": None, "provenance": None,
            "volseg_version": None}


def describe_annotation(store: st.ImageStore) -> dict | None:
    """For a truth store with not-annotated voxels: the value, and the annotated share in
    all and per time point, with the annotated frames counted (reads the whole store,
    shard row by shard row). None for any other store."""
    from volseg.io.truth import annotation_counts, not_annotated

    value = not_annotated(store)
    if value is None or not store.complete:
        return None
    counts = annotation_counts(store)
    frame = int(store.shape[2]) * int(store.shape[3])
    return {"not_annotated": value, "annotated_voxels": int(counts.sum()),
            "share": float(counts.sum() / max(1, counts.size * frame)),
            "annotated_frames": int(np.count_nonzero(counts)), "frames": int(counts.size),
            "per_timepoint": [float(row.sum() / max(1, row.size * frame)) for row in counts]}


def describe(path, *, channel=None, series=None) -> dict:
    """Shape, dtype, chunks, shards, codec, sizes, completeness and provenance of a store
    (or, for a model file, :func:`describe_model`)."""
    from pathlib import Path

    from volseg.io.location import is_url

    if not is_url(path):
        from volseg.models.zoo import is_package

        if is_package(path):
            return describe_package(path)
        if Path(path).is_file():
            return describe_model(path)
    obj = st.open_any(path, channel=channel, series=series)
    if isinstance(obj, st.Prediction):
        arrays = [_describe_array("mask", obj.mask)]
        if obj.probability is not None:
            arrays.insert(0, _describe_array("probability", obj.probability))
        meta = obj.volseg
        kind = "prediction"
    else:
        arrays = [_describe_array("0", obj)]
        meta = obj.volseg
        kind = meta.get("content", "image")
    annotation = None if isinstance(obj, st.Prediction) else describe_annotation(obj)
    return {"path": str(path), "kind": kind, "complete": obj.complete,
            **({"annotation": annotation} if annotation else {}),
            "made_by_volseg": "volseg" in obj.group.attrs, "arrays": arrays,
            "damaged": [a["damage"] for a in arrays if a["damage"]],
            "job": meta.get("job"), "version": meta.get("version"), "created": meta.get("created"),
            "finished": meta.get("finished"),
            **({"threshold": meta.get("threshold")} if "threshold" in meta else {})}

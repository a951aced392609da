"""Shared fixtures: real TIFF files, real Zarr stores, the CLI run in-process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from volseg.testing import validate_ngff, write_frames

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def frames_dir(tmp_path):
    """A small uint8 dataset as per-frame TIFFs, and the array it holds."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(3, 4, 37, 53), dtype=np.uint8)
    return write_frames(tmp_path / "frames", arr), arr


@pytest.fixture
def cli(capsys):
    """Run `volseg ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from volseg_cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --------------------------------------------------------------------------- NGFF validation

def volseg_stores(folder: Path) -> list[Path]:
    """The complete stores volseg wrote under ``folder`` (top-level groups only)."""
    import json

    found = []
    for meta in sorted(Path(folder).rglob("zarr.json")):
        store = meta.parent
        if (store.parent / "zarr.json").is_file() or store.name.endswith(".volseg-new"):
            continue
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
            for node in store.rglob("zarr.json"):
                json.loads(node.read_text())
        except (OSError, ValueError, AttributeError):
            continue  # a test damaged its metadata on purpose
        if isinstance(attrs, dict) and (attrs.get("volseg") or {}).get("complete"):
            found.append(store)
    return found


@pytest.fixture(autouse=True)
def _stores_validate(request):
    """Every complete store a test writes under its ``tmp_path`` passes NGFF validation."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is None or request.node.get_closest_marker("no_ngff_check"):
        return
    for store in volseg_stores(tmp):
        try:
            validate_ngff(store)
        except Exception as exc:  # ome-zarr-models raises RuntimeError/ValueError/ValidationError
            pytest.fail(f"{store} does not validate as OME-Zarr: {str(exc)[:2000]}")

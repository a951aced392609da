"""Check that a refactoring changed no result: run convert, predict, evaluate, the forest
and measure with two source trees of volseg on the same data, and compare what they wrote.

    python scripts/compare_outputs.py OLD_TREE [NEW_TREE] [--work DIR]

OLD_TREE / NEW_TREE are checkouts (e.g. ``git worktree add /tmp/old REV``); NEW_TREE
defaults to this repository. Both run with this interpreter's packages (TensorFlow,
zarr ...), each in its own subprocess that imports volseg from its tree. Data: a small
``volseg synth`` series (2 time points x 4 slices x 160 x 224), images and labels; a
tiny seeded U-Net (filters 4, depth 2) made once and used by both.

Compared: the decoded arrays of the image store, the truth store, the U-Net's and the
forest's probability and mask (exactly equal), and the reports of evaluate (both
predictions) and measure (every key except timings and paths). Stored bytes may differ on purpose (a codec change): the script
says whether they do. Exit 0 when every result is identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys, tempfile
tree, data, out = sys.argv[1:4]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# import volseg from TREE, not from the installed (editable) one
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
links = tempfile.mkdtemp()
os.symlink(os.path.join(tree, "volseg"), os.path.join(links, "volseg"))
os.symlink(os.path.join(tree, "cli"), os.path.join(links, "volseg_cli"))
sys.path.insert(0, links)
import volseg
assert volseg.__file__.startswith(links), volseg.__file__
# the public API (the same names before and after the move to layered subpackages)
quiet = dict(progress=False)
volseg.convert([os.path.join(data, "images")], os.path.join(out, "images.zarr"), **quiet)
volseg.convert([os.path.join(data, "labels")], os.path.join(out, "truth.zarr"), mask=True, **quiet)
images, truth = os.path.join(out, "images.zarr"), os.path.join(out, "truth.zarr")
volseg.predict(images, os.path.join(data, "model.keras"), os.path.join(out, "pred.zarr"),
               threshold=0.5, **quiet)
volseg.train(images, truth, os.path.join(out, "forest.model"), method="forest", trees=5,
             val_timepoints="1", **quiet)
volseg.predict(images, os.path.join(out, "forest.model"), os.path.join(out, "forest.zarr"), **quiet)
reports = {"evaluate": volseg.evaluate(os.path.join(out, "pred.zarr"), truth, **quiet),
           "evaluate forest": volseg.evaluate(os.path.join(out, "forest.zarr"), truth, **quiet)}
try:
    from volseg.stages.measure import measure
except ImportError:  # the flat tree
    from volseg.measure import measure
reports["measure"] = measure(os.path.join(out, "forest.zarr"), truth_path=truth,
                             spacing=(4.0, 1.0, 1.0))
with open(os.path.join(out, "report.json"), "w") as fh:
    json.dump(reports, fh, default=str)
"""

#: keys that hold times or paths (differ between two identical runs), at any depth
_VOLATILE = {"seconds", "voxels_per_second", "prediction", "truth", "roi", "blocks", "mask",
             "seconds_per_timepoint"}


def _stable(value):
    """``value`` without the volatile keys, at any depth."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _prepare(data: Path) -> None:
    if (data / "model.keras").exists():
        return
    from volseg.testing import make_tiny_model
    from volseg.data.synth import write_synth

    write_synth(data, timepoints=2, depth=4, height=160, width=224, seed=5)
    make_tiny_model(data / "model.keras", depth=2, filters=4)


def _arrays(out: Path) -> dict:
    import numpy as np
    import zarr

    found = {}
    for name in ("images.zarr/0", "truth.zarr/0", "pred.zarr/probability/0", "pred.zarr/mask/0",
                 "forest.zarr/probability/0", "forest.zarr/mask/0"):
        found[name] = np.asarray(zarr.open_array(str(out / name), mode="r")[...])
    return found


def _stored(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("c/**/*"))
            if p.is_file()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=ROOT)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-output" / "compare")
    args = ap.parse_args(argv)
    import numpy as np

    data = args.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    _prepare(data)
    outs = {}
    for tag, tree in (("old", args.old), ("new", args.new)):
        out = args.work / tag
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.mkdir(parents=True)
        subprocess.run([sys.executable, "-c", _CHILD, str(tree.resolve()), str(data), str(out)],
                       check=True)
        outs[tag] = out
    same = True
    a_old, a_new = _arrays(outs["old"]), _arrays(outs["new"])
    for name in a_old:
        equal = a_old[name].shape == a_new[name].shape and np.array_equal(a_old[name], a_new[name])
        same &= equal
        print(f"{name:28} {'identical' if equal else 'DIFFERENT'}  {a_old[name].shape}")
    r_old = json.loads((outs["old"] / "report.json").read_text())
    r_new = json.loads((outs["new"] / "report.json").read_text())
    for report in r_old:
        old, new = _stable(r_old[report]), _stable(r_new[report])
        keys = sorted(set(old) | set(new))
        differ = [k for k in keys if old.get(k) != new.get(k)]
        same &= not differ
        print(f"{report + ' report':28} "
              f"{'identical' if not differ else 'DIFFERENT: ' + ', '.join(differ)}"
              f"  ({len(keys)} keys)")
    s_old, s_new = _stored(outs["old"]), _stored(outs["new"])
    print(f"{'stored chunk bytes':28} {'identical' if s_old == s_new else 'differ (codec or layout change)'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

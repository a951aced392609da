"""The annotation loop, measured: what `volseg suggest` buys over random and evenly
spaced choices of the frames to annotate.

Each strategy starts from the same K0 annotated frames (evenly spaced) and repeats:
train (the forest by default, from scratch; or the U-Net, a fixed number of steps,
``--init`` from the last round's model) -> predict every frame -> choose k more frames
-> add their truth (`convert --mask --like` / `--update`, the real commands' code). The
score is the Dice on test frames no strategy may annotate (the last time point, or for
one time point the last slices), against the number of annotated frames; random choice
is averaged over ``--seeds`` seeds.

Also measured: scribbles against full frames. On the same K0 + k frames, scribbles keep
the truth's skeleton as structure strokes and short random background strokes at least
3 px from any structure (the pixel count is printed), against the full frames.

Data (``--data``): ``synth`` (volseg synth), ``harder`` (synth with a third of the time
points at half contrast and strong noise, as real recordings vary), ``chasedb1`` (its 20
images as 20 slices of one time point, halved in size; skipped when absent).

    .venv/bin/python benchmarks/bench_annotation.py --data synth,harder
    .venv/bin/python benchmarks/bench_annotation.py --data chasedb1 --rounds 4
    .venv/bin/python benchmarks/bench_annotation.py --method unet --steps 200

Prints a table per data set and writes the curves to ``--plots`` (a folder). One
training at a time: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
CHASE = ROOT.parent / "shared" / "data" / "chasedb1"
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line  # noqa: E402


# --------------------------------------------------------------------------- data

def load(name: str, *, seed: int = 0):
    """(images, labels) as (t, z, y, x) uint8, and the test frames (a boolean (t, z))."""
    from volseg.data.synth import synthesize

    if name in ("synth", "harder"):
        images, labels = synthesize(timepoints=8, depth=8, height=160, width=192, seed=seed)
        if name == "harder":
            rng = np.random.default_rng(seed + 1)
            for t in range(1, images.shape[0], 3):  # every third time point differs, the test one too
                img = images[t].astype(np.float32)
                img = 0.5 * (img - img.mean()) + img.mean() + rng.normal(0, 14, img.shape)
                images[t] = np.clip(img, 0, 255).astype(np.uint8)
        test = np.zeros(images.shape[:2], bool)
        test[-1] = True
        return images, labels, test
    if name == "chasedb1":
        if not (CHASE / "images.tif").is_file():
            return None
        images = tifffile.imread(CHASE / "images.tif")[:, ::2, ::2]
        labels = tifffile.imread(CHASE / "labels.tif")[:, ::2, ::2]
        images, labels = images[None], (labels != 0).astype(np.uint8)[None]
        test = np.zeros(images.shape[:2], bool)
        test[0, -4:] = True  # children 09 and 10
        return images, labels, test
    raise SystemExit(f"unknown data {name!r}")


def scribbles_of(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """Simulated scribbles of one frame: the truth's skeleton as structure strokes (1),
    short random background strokes (2) at least 3 px from structure, 0 elsewhere."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(seed)
    out = np.zeros(labels.shape, np.uint8)
    out[skeletonize(labels.astype(bool))] = 1
    far = ndimage.distance_transform_edt(labels == 0) >= 3
    h, w = labels.shape
    want = int(out.sum())  # about as many background pixels as structure pixels
    drawn = 0
    while drawn < want:
        y, x = rng.integers(h), rng.integers(w)
        length, angle = rng.integers(10, 40), rng.uniform(0, np.pi)
        ys = np.clip((y + np.arange(length) * np.sin(angle)).astype(int), 0, h - 1)
        xs = np.clip((x + np.arange(length) * np.cos(angle)).astype(int), 0, w - 1)
        ok = far[ys, xs] & (out[ys, xs] == 0)
        out[ys[ok], xs[ok]] = 2
        drawn += int(ok.sum())
    return out


# --------------------------------------------------------------------------- the loop

class Loop:
    """One strategy's run: stores in ``work``, the annotated frames so far."""

    def __init__(self, work: Path, images: np.ndarray, labels: np.ndarray, test, *,
                 method: str, steps: int):
        self.work, self.labels, self.test = work, labels, test
        self.method, self.steps = method, steps
        self.images = work / "images.zarr"
        if not self.images.exists():
            from volseg.testing import make_image_store

            make_image_store(self.images, images)
        self.truth = work / "truth.zarr"
        self.model = None
        self.round = 0

    def add(self, frames, *, scribbles: bool = False) -> None:
        from volseg.stages.convert import convert

        folder = self.work / f"labels-{self.round}"
        folder.mkdir()
        for t, z in frames:
            frame = (scribbles_of(self.labels[t, z], seed=t * 1000 + z) if scribbles
                     else self.labels[t, z])
            tifffile.imwrite(folder / f"t{t:03d}_z{z:03d}.tif", frame, photometric="minisblack")
        update = self.truth.exists()
        convert([folder], self.truth, mask=True, scribbles=scribbles,
                like=None if update else self.images, update=update)

    def train_predict(self):
        from volseg.stages.predict import predict
        from volseg.training import train
        from volseg.training.forest import train_forest

        self.round += 1
        model = self.work / f"model-{self.round}.{'keras' if self.method == 'unet' else 'forest'}"
        if self.method == "unet":
            train(self.images, self.truth, model, epochs=max(1, self.steps // 20),
                  steps_per_epoch=20, patch=64, batch=8, filters=8,
                  init=self.model, seed=self.round)
        else:
            train_forest(self.images, self.truth, model, max_samples=60_000, seed=self.round)
        self.model = model
        pred = self.work / f"pred-{self.round}.zarr"
        predict(self.images, model, pred)
        return pred

    def dice(self, pred) -> float:
        from volseg.io import store as st

        mask = st.open_prediction(pred).mask.array[:] != 0
        m, g = mask[self.test], self.labels[self.test] != 0
        tp = np.count_nonzero(m & g)
        return 2 * tp / max(1, np.count_nonzero(m) + np.count_nonzero(g))


def even_frames(shape, n: int, exclude) -> list[tuple[int, int]]:
    """``n`` frames spread evenly over the frames not in ``exclude`` (row-major order)."""
    free = [(t, z) for t in range(shape[0]) for z in range(shape[1]) if not exclude[t, z]]
    idx = np.linspace(0, len(free) - 1, n + 2)[1:-1].round().astype(int)
    return [free[i] for i in idx]


def run_strategy(name, data, *, k0, k, rounds, method, steps, seed, work, scribbles=False):
    """Dice per round: [(annotated frames, dice)]."""
    from volseg.stages.suggest import suggest

    images, labels, test = data
    loop = Loop(work, images, labels, test, method=method, steps=steps)
    annotated = np.zeros(test.shape, bool)
    first = even_frames(test.shape, k0, test)
    loop.add(first, scribbles=scribbles)
    for f in first:
        annotated[f] = True
    rng = np.random.default_rng(seed)
    curve = []
    for r in range(rounds + 1):
        pred = loop.train_predict()
        curve.append((int(annotated.sum()), loop.dice(pred)))
        if r == rounds:
            break
        blocked = annotated | test
        if name == "suggest":
            # the test frames stand for frames nobody annotates: suggest never sees them
            picks = [(p["t"], p["z"]) for p in
                     suggest(pred, truth=loop.truth, n=k + int(test.sum()))["picks"]
                     if not test[p["t"], p["z"]]][:k]
        elif name == "random":
            free = np.argwhere(~blocked)
            picks = [tuple(free[i]) for i in rng.choice(len(free), size=k, replace=False)]
        else:
            picks = even_frames(test.shape, k, blocked)
        loop.add(picks, scribbles=scribbles)
        for f in picks:
            annotated[f] = True
    return curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synth,harder")
    ap.add_argument("--method", choices=("forest", "unet"), default="forest")
    ap.add_argument("--steps", type=int, default=200, help="U-Net steps per round")
    ap.add_argument("--k0", type=int, default=2, help="frames annotated at the start")
    ap.add_argument("-k", type=int, default=2, help="frames added per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="random-choice runs averaged")
    ap.add_argument("--plots", default="bench-output/annotation")
    ap.add_argument("--strategies", default="suggest,even,random,scribbles",
                    help="which curves to run (the first annotated frames are the same)")
    args = ap.parse_args(argv)
    print(machine_line())
    print(f"model: {args.method}" + (f", {args.steps} steps per round (--init from the last)"
                                     if args.method == "unet" else ", trained from scratch"))
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for name in args.data.split(","):
        data = load(name)
        if data is None:
            print(f"{name}: data absent, skipped")
            continue
        started = time.monotonic()
        curves = {}
        with tempfile.TemporaryDirectory() as tmp:
            def run(strategy, seed=0, scribbles=False):
                work = Path(tmp) / f"{strategy}-{seed}-{int(scribbles)}"
                work.mkdir()
                out = run_strategy(strategy, data, k0=args.k0, k=args.k, rounds=args.rounds,
                                   method=args.method, steps=args.steps, seed=seed, work=work,
                                   scribbles=scribbles)
                shutil.rmtree(work)
                return out

            chosen = args.strategies.split(",")
            for strategy in ("suggest", "even"):
                if strategy in chosen:
                    curves[strategy] = run(strategy)
            if "random" in chosen:
                runs = [run("random", seed) for seed in range(args.seeds)]
                curves["random"] = [(runs[0][i][0], float(np.mean([r[i][1] for r in runs])))
                                    for i in range(len(runs[0]))]
            scribble_pixels = sum(int((scribbles_of(data[1][t, z], seed=t * 1000 + z) > 0).sum())
                                  for t, z in even_frames(data[2].shape, args.k0, data[2]))
            if "scribbles" in chosen:
                curves["even, scribbles"] = run("even", scribbles=True)
        report(name, curves, data, args, scribble_pixels, time.monotonic() - started, plots)
    return 0


def frames_to_reach(curve, target: float):
    """Fewest annotated frames whose Dice reaches ``target`` (None if never)."""
    return next((n for n, d in curve if d >= target - 1e-9), None)


def report(name, curves, data, args, scribble_pixels, seconds, plots) -> None:
    shape = data[0].shape
    frame_px = shape[2] * shape[3]
    print(f"\n{name}: {shape[0]} x {shape[1]} frames of {shape[2]} x {shape[3]}, test frames "
          f"{int(data[2].sum())} (never annotated); {seconds / 60:.1f} min")
    ns = [n for n, _ in next(iter(curves.values()))]
    print(f"  {'annotated frames':<22}" + "".join(f"{n:>8}" for n in ns))
    for key, curve in curves.items():
        print(f"  {key:<22}" + "".join(f"{d:>8.4f}" for _, d in curve))
    if "random" in curves:
        target = curves["random"][-1][1]
        need = {k: frames_to_reach(c, target) for k, c in curves.items()
                if "scribbles" not in k}
        print(f"  frames to reach random's final Dice {target:.4f}: "
              + ", ".join(f"{k} {'-' if v is None else v}" for k, v in need.items()))
        if need.get("suggest") is not None:
            saved = 1 - need["suggest"] / curves["random"][-1][0]
            print(f"  suggest: {100 * saved:.0f} % fewer annotated frames than random for "
                  "that Dice")
    if "even, scribbles" in curves and "even" in curves:
        print(f"  scribbles on the first {args.k0} frames: {scribble_pixels} pixels "
              f"({100 * scribble_pixels / (args.k0 * frame_px):.1f} % of those frames), Dice "
              f"{curves['even, scribbles'][0][1]:.4f} against {curves['even'][0][1]:.4f} from "
              "the same frames fully annotated")
    from volseg.viz.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, curve in curves.items():
        ax.plot([n for n, _ in curve], [d for _, d in curve], marker="o", label=key)
    ax.set_xlabel("annotated frames")
    ax.set_ylabel("Dice on test frames")
    ax.set_title(f"annotation loop, {name} ({args.method})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = plots / f"annotation-{name}-{args.method}.png"
    fig.savefig(path)
    plt.close(fig)
    print(f"  curves: {path}")


if __name__ == "__main__":
    sys.exit(main())

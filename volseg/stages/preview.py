"""Preview figures of single frames: image, truth, probability, mask and an error overlay.

Only the frames asked for are read from Zarr (one chunk per frame tile), so a preview of
a terabyte store takes as long as one of a tiny one. Figures are laid out in inches from
the frame's shape (no automatic layout), so the PNG's size in pixels is known in advance:
``figure_size``.

Colours of the error overlay are from the Okabe-Ito palette, which stays distinct under
the common colour-vision deficiencies: false positives vermillion, false negatives blue,
true positives yellow (drawn lighter, so the errors stand out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.io import store as st
from volseg.errors import InputError
from volseg.ops.indices import parse_indices
from volseg.engine.outputs import check_replaceable, figure_by_volseg, figure_metadata

#: Okabe-Ito colours (RGB 0..1) and how opaque each class is drawn on the image.
COLOURS = {
    "tp": ((0xF0 / 255, 0xE4 / 255, 0x42 / 255), 0.45),  # yellow
    "fp": ((0xD5 / 255, 0x5E / 255, 0x00 / 255), 0.85),  # vermillion
    "fn": ((0x00 / 255, 0x72 / 255, 0xB2 / 255), 0.85),  # blue
    "mask": ((0x00 / 255, 0x9E / 255, 0x73 / 255), 0.55),  # bluish green (no truth)
    "unannotated": ((0xCC / 255, 0x79 / 255, 0xA7 / 255), 0.35),  # reddish purple
}
LABELS = {"tp": "true positive (found)", "fp": "false positive (predicted, not in truth)",
          "fn": "false negative (missed)", "mask": "predicted structure",
          "unannotated": "not annotated (not counted)"}
#: Formats matplotlib writes that make sense for a figure.
FORMATS = (".png", ".pdf", ".svg")
#: A grid figure holds at most this many rows (frames).
MAX_GRID_ROWS = 64

# Layout, in inches.
PANEL_WIDTH = 3.0
_GAP = 0.08        # between panels
_MARGIN = 0.08     # left and right
_HEADER = 0.50     # above each row: row title and panel titles
_ROW_GAP = 0.10
_FOOTER = 0.50     # legend and probability colour bar


# --------------------------------------------------------------------------- frame choice


# --------------------------------------------------------------------------- per-frame data

@dataclass
class Frame:
    """The arrays of one (t, z) frame and its error counts."""

    t: int
    z: int
    image: np.ndarray
    mask: np.ndarray
    probability: np.ndarray | None = None   # 0..1 floats
    truth: np.ndarray | None = None
    threshold: float | None = None
    annotated: np.ndarray | None = None  # bool; None: every truth pixel is annotated

    @property
    def counts(self) -> dict | None:
        if self.truth is None:
            return None
        if self.annotated is None:
            return confusion(self.mask, self.truth)
        return confusion(self.mask[self.annotated], self.truth[self.annotated])

    @property
    def dice(self) -> float | None:
        c = self.counts
        return None if c is None else dice(c)


def confusion(mask: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel counts ``tp fp fn tn`` of a binary mask against a binary truth."""
    m, g = mask.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(m & g))
    fp = int(np.count_nonzero(m)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(m.size) - tp - fp - fn}


def dice(counts: dict) -> float | None:
    """Dice ``2 TP / (2 TP + FP + FN)``; None when both masks are empty."""
    den = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    return None if den == 0 else 2 * counts["tp"] / den


def contrast_limits(image: np.ndarray, *, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Display range from percentiles, so a few bright pixels do not hide the rest."""
    lo, hi = (float(v) for v in np.percentile(image, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def grey(image: np.ndarray) -> np.ndarray:
    """The image scaled to 0..1 by :func:`contrast_limits`, as float32."""
    lo, hi = contrast_limits(image)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def overlay(image: np.ndarray, layers: dict) -> np.ndarray:
    """RGB (y, x, 3) of a grey image with coloured boolean ``layers`` blended on top.

    ``layers`` maps a key of :data:`COLOURS` to a boolean array.
    """
    rgb = np.repeat(grey(image)[..., None], 3, axis=2)
    for key, where in layers.items():
        colour, alpha = COLOURS[key]
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)
    return rgb


def error_layers(mask: np.ndarray, truth: np.ndarray) -> dict:
    """Boolean layers ``tp``, ``fp``, ``fn`` of a mask against the truth."""
    m, g = mask.astype(bool), truth.astype(bool)
    return {"tp": m & g, "fp": m & ~g, "fn": ~m & g}


def read_frame(pred: st.Prediction, images: st.ImageStore, t: int, z: int, *,
               truth: st.ImageStore | None = None) -> Frame:
    """Read one frame of each store (only the chunks of that frame)."""
    prob = None
    if pred.probability is not None:
        prob = np.asarray(pred.probability.array[t, z], np.float32) / pred.probability_scale()
    gt = None
    if truth is not None:

        from volseg.io.truth import not_annotated
        from volseg.ops.annotation import annotated, check_mask, known_labels

        gt = np.asarray(truth.array[t, z])
        value = not_annotated(truth)
        if value is not None:
            where = annotated(gt, value)
            gt = known_labels(gt, value)
        # evaluate's rule, so a preview never shows a Dice evaluate would refuse
        check_mask(gt, name=f"{truth.path}: frame t={t} z={z}")
    return Frame(t=t, z=z, image=np.asarray(images.array[t, z]), mask=np.asarray(pred.mask.array[t, z]),
                 probability=prob, truth=gt, threshold=pred.threshold,
                 annotated=where if truth is not None and value is not None else None)


# --------------------------------------------------------------------------- figures

def panel_names(*, truth: bool, probability: bool) -> list[str]:
    """The panels of a row, left to right."""
    names = ["image"]
    if truth:
        names.append("truth")
    if probability:
        names.append("probability")
    names.append("mask")
    names.append("errors" if truth else "overlay")
    return names


def _panel_inches(shape, panel_width: float) -> tuple[float, float]:
    """Panel width and height in inches for a (y, x) frame; very tall frames are capped."""
    y, x = shape
    scale = min(panel_width / x, 2 * panel_width / y)
    return x * scale, y * scale


def figure_size(n_panels: int, n_rows: int, frame_shape, *, panel_width: float = PANEL_WIDTH):
    """Figure width and height in inches (multiply by dpi for the PNG's pixels)."""
    pw, ph = _panel_inches(frame_shape, panel_width)
    width = 2 * _MARGIN + n_panels * pw + (n_panels - 1) * _GAP
    height = n_rows * (_HEADER + ph) + (n_rows - 1) * _ROW_GAP + _FOOTER
    return width, height


def preview_figure(frames: list[Frame], *, panel_width: float = PANEL_WIDTH, dpi: int = 100):
    """A matplotlib Figure with one row of panels per frame (all frames the same shape).

    Each panel's axes carries its name as label (``ax.get_label()``), e.g. ``"errors"``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    first = frames[0]
    names = panel_names(truth=first.truth is not None, probability=first.probability is not None)
    width, height = figure_size(len(names), len(frames), first.image.shape, panel_width=panel_width)
    pw, ph = _panel_inches(first.image.shape, panel_width)
    fig = Figure(figsize=(width, height), dpi=dpi)  # no pyplot: no global state, no display
    top = height
    prob_im = None
    for frame in frames:
        top -= _HEADER
        bottom = top - ph
        title = f"t={frame.t}  z={frame.z}"
        if frame.annotated is not None and not frame.annotated.any():
            title += "   not annotated: no Dice"
        elif frame.truth is not None:
            d = frame.dice
            title += "   Dice " + ("n/a (no structure in truth or mask)" if d is None else f"{d:.3f}")
            if frame.annotated is not None:
                title += f"   ({100 * frame.annotated.mean():.0f} % annotated)"
        fig.text(_MARGIN / width, (top + 0.30) / height, title, fontsize=10, weight="bold",
                 va="bottom", ha="left")
        for k, name in enumerate(names):
            left = _MARGIN + k * (pw + _GAP)
            ax = fig.add_axes((left / width, bottom / height, pw / width, ph / height), label=name)
            ax.set_xticks([])
            ax.set_yticks([])
            im = _draw(ax, name, frame)
            if name == "probability":
                prob_im = im
        top = bottom - _ROW_GAP
    _footer(fig, names, width, height, pw, prob_im, Patch,
            partial=any(f.annotated is not None for f in frames))
    return fig


def _draw(ax, name: str, frame: Frame):
    common = dict(interpolation="nearest")
    if name == "image":
        lo, hi = contrast_limits(frame.image)
        ax.set_title(f"image (display {_number(lo)}-{_number(hi)})", fontsize=8)
        return ax.imshow(frame.image, cmap="gray", vmin=lo, vmax=hi, **common)
    if name == "truth":
        ax.set_title("ground truth", fontsize=8)
        if frame.annotated is not None:  # not annotated: its own colour, never black or white
            rgb = np.repeat(frame.truth.astype(np.float32)[..., None], 3, axis=2)
            rgb[~frame.annotated] = COLOURS["unannotated"][0]
            return ax.imshow(rgb, **common)
        return ax.imshow(frame.truth, cmap="gray", vmin=0, vmax=1, **common)
    if name == "probability":
        ax.set_title("probability", fontsize=8)
        return ax.imshow(frame.probability, cmap="viridis", vmin=0, vmax=1, **common)
    if name == "mask":
        thr = "" if frame.threshold is None else f" (probability \u2265 {frame.threshold:.2f})"
        ax.set_title("mask" + thr, fontsize=8)
        return ax.imshow(frame.mask, cmap="gray", vmin=0, vmax=1, **common)
    if name == "errors":
        c = frame.counts
        ax.set_title(f"errors: {c['fp']:,} FP, {c['fn']:,} FN px", fontsize=8)
        layers = error_layers(frame.mask, frame.truth)
        if frame.annotated is not None:
            layers = {k: v & frame.annotated for k, v in layers.items()}
            layers["unannotated"] = ~frame.annotated
        return ax.imshow(overlay(frame.image, layers), **common)
    ax.set_title("mask on image", fontsize=8)
    return ax.imshow(overlay(frame.image, {"mask": frame.mask.astype(bool)}), **common)


def _number(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _footer(fig, names, width, height, pw, prob_im, Patch, partial=False):
    keys = ["tp", "fp", "fn"] if "errors" in names else ["mask"]
    if partial and "errors" in names:
        keys.append("unannotated")
    handles = [Patch(facecolor=COLOURS[k][0], edgecolor="0.3", label=LABELS[k]) for k in keys]
    right = width - _MARGIN
    fig.legend(handles=handles, loc="lower right", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(right / width, 0.04 / height), borderaxespad=0, handlelength=1.2,
               columnspacing=1.0)
    if prob_im is not None:
        k = names.index("probability")
        left = _MARGIN + k * (pw + _GAP) + 0.1 * pw
        cax = fig.add_axes((left / width, 0.30 / height, 0.8 * pw / width, 0.07 / height),
                           label="colorbar")
        cbar = fig.colorbar(prob_im, cax=cax, orientation="horizontal")
        cbar.set_ticks([0, 0.5, 1])
        cbar.ax.tick_params(labelsize=7, length=2, pad=1)


# --------------------------------------------------------------------------- the command

def _check_output(out) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise InputError(f"-o {out}: give a figure file name ending in "
                         f"{', '.join(FORMATS)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"-o {out}: folder {parent} does not exist")
    if out.is_dir():
        raise InputError(f"-o {out}: is a folder; give a file name")
    return out


def open_inputs(pred, images, truth=None, *, channel=None, series=None):
    """Open and cross-check the stores of a preview; :class:`InputError` on mismatch.
    ``channel`` and ``series`` choose what to read from other tools' image stores."""
    select = {"channel": channel, "series": series}
    p = st.open_prediction(pred)
    im = st.open_image(images, **select)
    shape = tuple(p.mask.shape)
    if tuple(im.shape) != shape:
        raise InputError(f"{images}: shape {tuple(im.shape)} differs from the prediction "
                         f"{pred} {shape}; give the images it was predicted from",
                         param="images")
    gt = None
    if truth is not None:
        gt = st.open_image(truth, what="truth store", **select)
        if tuple(gt.shape) != shape:
            raise InputError(f"{truth}: shape {tuple(gt.shape)} differs from the "
                             f"prediction {pred} {shape}", param="truth")
    return p, im, gt


def frame_path(out: Path, t: int, z: int, shape) -> Path:
    """``FIG_t000_z003.png`` for frame (t, z): 3-digit padding, more where needed."""
    wt = max(3, len(str(shape[0] - 1)))
    wz = max(3, len(str(shape[1] - 1)))
    return out.with_name(f"{out.stem}_t{t:0{wt}d}_z{z:0{wz}d}{out.suffix}")


def preview(pred, images, *, truth=None, t=0, z=0, out="preview.png", grid: bool = False,
            dpi: int = 100, panel_width: float = PANEL_WIDTH, on_frame=None,
            overwrite: bool = False, channel: int | None = None,
            series: int | None = None) -> list[Path]:
    """Write preview figures of frames of a prediction.

    Parameters
    ----------
    pred, images : path-like
        A prediction store and the image store it was predicted from.
    truth : path-like, optional
        A binary truth store: adds the ground-truth panel, the error overlay and Dice.
    t, z : int, sequence of int, or str
        Frames to show, see :func:`volseg.ops.indices.parse_indices` (``"0-3"``, ``"1,3,5"``,
        ``"all"``).
    out : path-like
        Figure file (.png, .pdf or .svg). Several frames without ``grid`` write one
        file per frame, ``OUT_t000_z003.png``.
    grid : bool
        One figure with a row per frame (at most :data:`MAX_GRID_ROWS`).
    dpi, panel_width :
        Resolution and width of one panel in inches: a PNG is
        ``figure_size(...) * dpi`` pixels.
    on_frame : callable, optional
        Called per frame with a dict: ``t``, ``z``, ``path``, and with a truth ``dice``,
        ``tp``, ``fp``, ``fn``.
    overwrite : bool
        Replace files that volseg did not write; figures volseg wrote are always
        replaced. Without it such a file is refused before anything is written.
    channel, series : int, optional
        The channel and bioformats2raw series of image and truth stores made by other
        tools.

    Returns
    -------
    list of Path
        The files written.
    """
    out = _check_output(out)
    p, im, gt = open_inputs(pred, images, truth, channel=channel, series=series)
    shape = p.mask.shape
    ts = parse_indices(t, shape[0], param="t", axis="time point")
    zs = parse_indices(z, shape[1], param="z", axis="depth slice")
    pairs = [(ti, zi) for ti in ts for zi in zs]
    if grid and len(pairs) > MAX_GRID_ROWS:
        raise InputError(f"{len(pairs)} frames make too many rows (at most "
                         f"{MAX_GRID_ROWS}); choose fewer time points or slices",
                         param="grid")
    paths = [out] if grid or len(pairs) == 1 else [frame_path(out, ti, zi, shape)
                                                    for ti, zi in pairs]
    for path in paths:
        check_replaceable(path, marker=figure_by_volseg, overwrite=overwrite, what="figure")
    written: list[Path] = []

    def report(frame, path):
        if on_frame is not None:
            info = {"t": frame.t, "z": frame.z, "path": path}
            if frame.annotated is not None and not frame.annotated.any():
                info["annotated"] = False
            elif frame.truth is not None:
                info.update(frame.counts, dice=frame.dice)
            on_frame(info)

    if grid or len(pairs) == 1:
        frames = [read_frame(p, im, ti, zi, truth=gt) for ti, zi in pairs]
        save_figure(preview_figure(frames, panel_width=panel_width, dpi=dpi), out)
        written.append(out)
        for f in frames:
            report(f, out)
        return written
    for ti, zi in pairs:  # one frame in memory at a time
        frame = read_frame(p, im, ti, zi, truth=gt)
        path = frame_path(out, ti, zi, shape)
        save_figure(preview_figure([frame], panel_width=panel_width, dpi=dpi), path)
        written.append(path)
        report(frame, path)
    return written


def save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot would pick
    part = path.with_name(f".{path.name}.part")
    try:  # whole or not at all: a full disk never leaves half a figure under the name
        fig.savefig(part, dpi=fig.dpi, metadata=figure_metadata(path.suffix),
                    format=path.suffix.lower()[1:])
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise

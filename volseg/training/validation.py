"""Validation during training: whole frames, predicted as ``volseg predict`` would.

Whole frames, not a fixed set of validation patches, because that is exactly what
``predict`` + ``evaluate`` will measure (borders, padding and tiling included); a
larger validation set is subsampled to whole frames evenly spread over it.
"""

from __future__ import annotations

import time

import numpy as np

from volseg.errors import InputError

from volseg.training.sampler import check_truth
from volseg.ops.thresholds import ValidationHistogram, best_threshold, dice_at, quantise


def choose_val_frames(frames, frame_pixels: int, max_pixels: int | None):
    """All validation frames, or an evenly spread subset within ``max_pixels``."""
    frames = list(frames)
    if not max_pixels or len(frames) * frame_pixels <= max_pixels:
        return frames
    n = max(1, max_pixels // max(1, frame_pixels))
    idx = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
    return [frames[i] for i in idx]


class Validator:
    """Predict whole validation frames and histogram their probabilities per class.

    Frames are tiled exactly as ``volseg predict`` tiles them (:mod:`volseg.ops.tiling`),
    with the model's margin as halo; only pixels inside the ROI count. With
    ``context`` K > 1 each frame's input is its K neighbouring slices as channels, by
    the end-of-stack rule of training and predict (:mod:`volseg.ops.context`).
    """

    def __init__(self, image, truth, frames, *, roi=None, multiple: int, margin: int,
                 context: int = 1):
        from volseg.ops.tiling import tile_plan

        self.image, self.truth, self.roi = image, truth, roi
        self.context = int(context)
        self.frames = list(frames)
        self.plan = tile_plan(image.shape[2], image.shape[3], halo=margin, multiple=multiple)
        self.pixels = len(self.frames) * image.shape[2] * image.shape[3]

    def probabilities(self, model, t: int, z: int) -> np.ndarray:
        """Probability frame (H, W) float32 for frame (t, z)."""
        from volseg.ops.tiling import predict_frames

        if self.context == 1:
            frame = np.asarray(self.image[t, z])
        else:
            from volseg.ops.context import read_context

            frame = read_context(self.image, t, z, context=self.context)[None]
        return predict_frames(frame, lambda x: np.asarray(model.predict_on_batch(x)),
                              self.plan, batch_size=1)[0]

    def run(self, model) -> dict:
        """Validate ``model``: Dice at 0.5, the best threshold and its Dice, histograms.

        Probabilities are quantised to uint8 levels as ``volseg predict`` stores them,
        so the best threshold selects on the stored probabilities exactly the mask it
        was chosen for (:mod:`volseg.ops.thresholds`).
        """
        from volseg.io.truth import frame_masks

        frames = ValidationHistogram()
        start = time.monotonic()
        for t, z in self.frames:
            prob = self.probabilities(model, t, z)
            if not np.isfinite(prob).all():
                raise InputError(f"training diverged: the network's outputs are NaN or "
                                 f"infinite (frame t={t} z={z}); nothing was saved from this "
                                 "epoch on: lower the learning rate, or use --precision float32",
                                 param="learning_rate")
            lab = np.asarray(self.truth[t, z])
            check_truth(lab, f"validation frame t={t} z={z}")
            inside, counted = frame_masks(self.roi, t, z, lab.shape)
            frames.add(quantise(prob), lab, annotated=inside, counted=counted)
        hist = frames.histogram()
        # Without foreground in the validation frames no threshold is better than 0.5.
        threshold, dice_best = best_threshold(hist) or (0.5, float("nan"))
        return {"dice": dice_at(hist, 0.5), "best_threshold": threshold,
                "best_dice": dice_best, "histogram": hist, "structure_share": frames.share,
                "note": frames.note(),
                "seconds": time.monotonic() - start}

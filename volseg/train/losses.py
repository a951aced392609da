"""The training losses, in ``keras.ops`` only (any Keras backend)."""

from __future__ import annotations

from .config import check_loss


def make_loss(kind: str = "bce+dice"):
    """Loss on targets ``(n, h, w, 2)`` = [truth, weight] and probabilities ``(n, h, w, 1)``.

    * ``bce``: binary cross-entropy averaged over pixels of weight 1;
    * ``dice``: 1 - soft Dice over the whole batch (batch Dice, as nnU-Net: stable
      when some patches hold no foreground);
    * ``bce+dice``: their sum (the default: BCE gives smooth per-pixel gradients, Dice
      counters the class imbalance).

    Uses ``keras.ops`` only, so it runs under any backend.
    """
    from keras import ops

    check_loss(kind)
    eps = 1e-6

    def parts(target, prob):
        target = ops.cast(target, "float32")
        prob = ops.cast(prob, "float32")
        y, w = target[..., 0:1], target[..., 1:2]
        return y, w, prob

    def bce(target, prob):
        y, w, p = parts(target, prob)
        p = ops.clip(p, eps, 1.0 - eps)
        per_pixel = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.sum(w * per_pixel) / ops.maximum(ops.sum(w), 1.0)

    def dice(target, prob):
        y, w, p = parts(target, prob)
        inter = ops.sum(w * y * p)
        denom = ops.sum(w * y) + ops.sum(w * p)
        return 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)

    def bce_dice(target, prob):
        return bce(target, prob) + dice(target, prob)

    fn = {"bce": bce, "dice": dice, "bce+dice": bce_dice}[kind]
    fn.__name__ = kind.replace("+", "_")
    return fn

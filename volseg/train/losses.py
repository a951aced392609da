"""The training losses, in ``keras.ops`` only (any Keras backend)."""

from __future__ import annotations

from .config import check_loss


def make_loss(kind: str = "bce+dice"):
    """Loss on targets ``(n, h, w, 2)`` = [truth, weight] and probabilities ``(n, h, w, 1)``.

    * ``bce``: binary cross-entropy averaged over pixels of weight 1;
    * ``dice``: 1 - soft Dice over the whole batch (batch Dice, as nnU-Net: stable
      when some patches hold no foreground);
    * ``bce+dice``: their sum (the default: BCE gives smooth per-pixel gradients, Dice
      counters the class imbalance);
    * ``bce+dice+cldice``: BCE plus half Dice and half soft-clDice (Shit et al., CVPR
      2021): Dice of the soft skeletons, which rewards keeping thin tubes connected
      rather than fat tubes exact. :data:`SKELETON_ITERATIONS` erosions bound the
      radius of the tubes it sees whole.

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

    def cldice(target, prob):
        y, w, p = parts(target, prob)
        skel_p, skel_y = soft_skeleton(p * w), soft_skeleton(y * w)
        precision = (ops.sum(skel_p * y) + 1.0) / (ops.sum(skel_p) + 1.0)
        sensitivity = (ops.sum(skel_y * p) + 1.0) / (ops.sum(skel_y) + 1.0)
        return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)

    def bce_dice_cldice(target, prob):
        return bce(target, prob) + 0.5 * dice(target, prob) + 0.5 * cldice(target, prob)

    fn = {"bce": bce, "dice": dice, "bce+dice": bce_dice,
          "bce+dice+cldice": bce_dice_cldice}[kind]
    fn.__name__ = kind.replace("+", "_")
    return fn


#: Erosions of the soft skeleton: tubes up to about twice this radius keep a skeleton.
SKELETON_ITERATIONS = 10


def soft_skeleton(x, iterations: int = SKELETON_ITERATIONS):
    """Differentiable skeleton of probabilities ``x`` (n, h, w, 1) by min/max pooling.

    Morphological skeleton as the union over erosions of "erosion minus its opening",
    with min/max pooling standing in for erosion/dilation (soft-clDice). ``keras.ops``
    only.
    """
    from keras import ops

    def erode(v):
        across = -ops.max_pool(-v, (3, 1), strides=1, padding="same")
        down = -ops.max_pool(-v, (1, 3), strides=1, padding="same")
        return ops.minimum(across, down)

    def opening(v):
        return ops.max_pool(erode(v), (3, 3), strides=1, padding="same")

    skeleton = ops.relu(x - opening(x))
    for _ in range(int(iterations)):
        x = erode(x)
        delta = ops.relu(x - opening(x))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    return skeleton

"""The training losses, in ``keras.ops`` only (any Keras backend)."""

from __future__ import annotations

from volseg.training.config import check_loss


#: Losses whose targets carry a third channel, the truth's tubed skeleton
#: (:func:`volseg.training.sampler.tubed_skeleton`).
SKELETON_TARGET_LOSSES = ("bce+dice+skeleton",)


def make_loss(kind: str = "bce+dice"):
    """Loss on targets ``(n, h, w, 2)`` = [truth, weight] and probabilities ``(n, h, w, 1)``.

    * ``bce``: binary cross-entropy averaged over pixels of weight 1;
    * ``dice``: 1 - soft Dice over the whole batch (batch Dice, as nnU-Net: stable
      when some patches hold no foreground);
    * ``bce+dice``: their sum (BCE gives smooth per-pixel gradients, Dice counters the
      class imbalance);
    * ``bce+dice+cldice``: BCE plus half Dice and half soft-clDice (Shit et al., CVPR
      2021): Dice of the soft skeletons, which rewards keeping thin tubes connected
      rather than fat tubes exact. :data:`SKELETON_ITERATIONS` erosions bound the
      radius of the tubes it sees whole. Its skeletons are made in the training step,
      which then takes about 2.2x as long (8 filters, 256 px patches, 2 CPU cores);
    * ``bce+dice+skeleton``: BCE plus Dice plus skeleton recall (Kirchhoff et al., ECCV
      2024): 1 - the share of the truth's tubed skeleton that the prediction covers,
      which rewards finding thin tubes whole as clDice does. It needs targets
      ``(n, h, w, 3)``, the third channel the skeleton, which the patch sampler makes
      in its worker threads (:data:`SKELETON_TARGET_LOSSES`); the step costs no more
      than ``bce+dice``. The default of ``volseg train``: on CHASE_DB1 it gained 0.019
      validation Dice over ``bce+dice`` in a 10-minute run and was level in a 30-minute
      one, and on the demo's tubes the skeleton length and junction count came within
      a few per cent of the truth's (docs/decisions.md, "Accuracy per CPU-minute").

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

    def skeleton_recall(target, prob):
        if target.shape[-1] < 3:  # known when the step is traced, so this costs nothing
            raise ValueError(f"loss {kind} needs targets (n, h, w, 3) whose third channel "
                             "is the skeleton: PatchSampler(skeleton=True)")
        _, w, p = parts(target, prob)
        skeleton = ops.cast(target[..., 2:3], "float32") * w
        return 1.0 - (ops.sum(skeleton * p) + 1.0) / (ops.sum(skeleton) + 1.0)

    def bce_dice_skeleton(target, prob):
        return bce_dice(target, prob) + skeleton_recall(target, prob)

    fn = {"bce": bce, "dice": dice, "bce+dice": bce_dice,
          "bce+dice+cldice": bce_dice_cldice, "bce+dice+skeleton": bce_dice_skeleton}[kind]
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

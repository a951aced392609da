"""Tests for volseg.training.schedule, the soft-clDice loss and the intensity augmentations."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.training import TrainConfig, make_loss, train
from volseg.training.schedule import FLOOR, WARMUP, WARMUP_START, RunClock, cosine_rate


def test_cosine_rate_warms_up_then_decays_to_its_floor():
    base = 2e-3
    assert cosine_rate(0.0, base=base) == pytest.approx(WARMUP_START * base)
    assert cosine_rate(WARMUP, base=base) == pytest.approx(base)
    assert cosine_rate(1.0, base=base) == pytest.approx(FLOOR * base)
    assert cosine_rate(7.0, base=base) == cosine_rate(1.0, base=base)  # clipped
    rates = [cosine_rate(f, base=base) for f in np.linspace(WARMUP, 1, 50)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    warm = [cosine_rate(f, base=base) for f in np.linspace(0, WARMUP, 10)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_run_clock_measures_by_deadline_or_steps():
    now = [100.0]
    clock = RunClock(1000, deadline=160.0, reserve=10.0, clock=lambda: now[0])
    assert clock.fraction(0) == 0.0
    now[0] = 125.0
    assert clock.fraction(10) == pytest.approx(0.5)  # 25 of the 50 s before the reserve
    assert clock.fraction(900) == pytest.approx(0.9)  # more steps done than time: steps
    now[0] = 150.0
    assert clock.fraction(10) == 1.0
    by_steps = RunClock(40)
    assert by_steps.fraction(10) == 0.25 and by_steps.fraction(80) == 1.0


def test_schedule_is_checked():
    with pytest.raises(InputError) as exc:
        TrainConfig("i.zarr", "t.zarr", "m.keras", schedule="step")
    assert exc.value.param == "schedule" and "cosine, plateau" in exc.value.message


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from test_train import make_store, synthetic

    root = tmp_path_factory.mktemp("schedule")
    images, labels = synthetic((3, 2, 48, 48), seed=3)
    make_store(root / "i.zarr", images)
    make_store(root / "t.zarr", labels)
    return root


class TickingClock:
    """A clock that advances one second each time it is read: the run's progress in
    time no longer depends on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.mark.slow
def test_cosine_reaches_its_floor_at_the_time_limit(stores, tmp_path):
    from volseg.training import StopSignal

    base = 3e-3
    summary = train(stores / "i.zarr", stores / "t.zarr", tmp_path / "m.keras", epochs=1000,
                    steps_per_epoch=3, patch=32, batch=2, filters=2, depth=2,
                    learning_rate=base, time_limit=2.0, patience=1000,
                    stop=StopSignal(clock=TickingClock()))
    rates = [h["learning_rate"] for h in summary["history"]]
    assert summary["stop_reason"] == "time limit" and len(rates) >= 2
    assert rates[-1] < 0.1 * base  # the last step ran at the end of the cosine
    assert max(rates) > 0.5 * base
    assert all(a >= b for a, b in zip(rates[1:], rates[2:]))


@pytest.mark.slow
def test_cosine_without_time_limit_ends_with_the_last_epoch(stores, tmp_path):
    base = 3e-3
    summary = train(stores / "i.zarr", stores / "t.zarr", tmp_path / "m.keras", epochs=4,
                    steps_per_epoch=5, patch=32, batch=2, filters=2, depth=2,
                    learning_rate=base, patience=1000)
    rates = [h["learning_rate"] for h in summary["history"]]
    # the rate of the last step: 19 of 20 steps done
    assert rates[-1] == pytest.approx(cosine_rate(19 / 20, base=base), rel=1e-6)


@pytest.mark.slow
def test_plateau_keeps_the_rate_while_validation_improves(stores, tmp_path):
    summary = train(stores / "i.zarr", stores / "t.zarr", tmp_path / "m.keras", epochs=2,
                    steps_per_epoch=4, patch=32, batch=2, filters=2, depth=2,
                    learning_rate=2e-3, schedule="plateau")
    assert [h["learning_rate"] for h in summary["history"]] == [2e-3, 2e-3]


def tube(shape=(1, 40, 40, 1), *, gap=False):
    y = np.zeros(shape, np.float32)
    y[0, 18:23, 2:-2, 0] = 1.0
    if gap:
        y[0, :, 18:22, 0] = 0.0
    return y


def test_soft_skeleton_is_the_centre_line():
    from volseg.training.losses import soft_skeleton

    skeleton = np.asarray(soft_skeleton(tube()))[0, :, :, 0]
    assert skeleton[20, 6:-6].min() > 0.99  # the centre row of the 5-px bar
    assert skeleton[[18, 19, 21, 22], 6:-6].max() < 1e-6


def test_cldice_penalises_a_broken_tube_more_than_a_fat_one():
    truth = tube()
    target = np.concatenate([truth, np.ones_like(truth)], axis=-1)
    broken = tube(gap=True)  # 4 of 36 columns missing: Dice still high
    fat = truth.copy()
    fat[0, 16:25, 2:-2, 0] = 1.0  # connected but 80 % too wide: Dice lower
    dice, cl = make_loss("dice"), make_loss("bce+dice+cldice")
    assert float(dice(target, broken)) < float(dice(target, fat))

    def cldice_part(p):
        from volseg.training.losses import soft_skeleton

        sp, sy = np.asarray(soft_skeleton(p)), np.asarray(soft_skeleton(truth))
        prec = (np.sum(sp * truth) + 1) / (np.sum(sp) + 1)
        sens = (np.sum(sy * p) + 1) / (np.sum(sy) + 1)
        return 1 - 2 * prec * sens / (prec + sens)

    assert cldice_part(broken) > cldice_part(fat)
    # the combined loss is BCE + half Dice + half clDice
    p = np.clip(broken, 0.02, 0.98)
    expect = (float(make_loss("bce")(target, p)) + 0.5 * float(dice(target, p))
              + 0.5 * cldice_part(p))
    assert float(cl(target, p)) == pytest.approx(expect, rel=1e-4)


def test_skeleton_recall_penalises_a_broken_tube_and_needs_the_skeleton_channel():
    from volseg.training.sampler import tubed_skeleton

    truth = tube()
    skeleton = tubed_skeleton(truth[0, :, :, 0])[None, :, :, None]
    target = np.concatenate([truth, np.ones_like(truth), skeleton], axis=-1)
    loss, bce_dice = make_loss("bce+dice+skeleton"), make_loss("bce+dice")
    broken = np.clip(tube(gap=True), 0.02, 0.98)
    recall = (np.sum(skeleton * broken) + 1) / (np.sum(skeleton) + 1)
    expect = float(bce_dice(target, broken)) + 1 - recall
    assert float(loss(target, broken)) == pytest.approx(expect, rel=1e-4)
    whole = np.clip(truth, 0.02, 0.98)
    assert float(loss(target, whole)) < float(loss(target, broken))
    # outside the weight, a missed centre line costs nothing
    target[0, :, 18:22, 1] = 0.0
    masked = float(loss(target, broken)) - float(bce_dice(target, broken))
    assert masked == pytest.approx(1 - (np.sum(skeleton * target[..., 1:2] * broken) + 1)
                                   / (np.sum(skeleton * target[..., 1:2]) + 1), rel=1e-4)
    with pytest.raises(ValueError, match="skeleton"):
        loss(target[..., :2], broken)  # a sampler made without skeleton=True


def test_gamma_and_noise_augmentations():
    from volseg.training.sampler import Augment, PatchSampler

    sampler = PatchSampler.__new__(PatchSampler)
    sampler.normalization = (10.0, 210.0)
    sampler.patch = (16, 16)
    img = np.linspace(10, 210, 256, dtype=np.float32).reshape(16, 16)
    lab = weight = np.ones_like(img)
    plain = Augment(flips=False, rotations=False, contrast=0, brightness=0)
    sampler.augment = plain
    same, _, _ = sampler._augment(np.random.default_rng(0), img, lab, weight)
    np.testing.assert_array_equal(same, img)
    sampler.augment = Augment(flips=False, rotations=False, contrast=0, brightness=0, gamma=0.5)
    bent, _, _ = sampler._augment(np.random.default_rng(1), img, lab, weight)
    assert bent[0, 0] == pytest.approx(10) and bent[-1, -1] == pytest.approx(210)  # ends kept
    assert np.all(np.diff(bent.ravel()) >= 0) and not np.allclose(bent, img)  # order kept
    sampler.augment = Augment(flips=False, rotations=False, contrast=0, brightness=0, noise=0.1)
    noisy, _, _ = sampler._augment(np.random.default_rng(2), img, lab, weight)
    assert 0 < np.std(noisy - img) <= 0.1 * 200 * 1.2

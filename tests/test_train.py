"""Tests for volseg.train and `volseg train`: tiny U-Nets on tiny synthetic stores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.models.unet import file_sha256, load_model, read_model_info
from volseg.io.store import create_image, finish, make_job, open_image
from volseg.ops.metrics import quantise, threshold_bin
from volseg.training.remote import check_train_inputs
from volseg.training import StopSignal, TrainConfig, make_loss, train

TINY = ["--filters", "4", "--depth", "2", "--patch", "32", "--batch", "4"]


def make_store(path, data):
    store = create_image(path, shape=data.shape, dtype=data.dtype,
                         job=make_job("test", parameters={}))
    store.array[...] = data
    finish(store.group)
    return open_image(path)


def synthetic(shape, seed=0):
    """Noisy frames with bright lines (the structure) and a few distracting dim blobs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for t in range(shape[0]):
        for z in range(shape[1]):
            for _ in range(2):
                r = rng.integers(6, shape[2] - 6)
                labels[t, z, r:r + 2, 4:-4] = 1
            c = rng.integers(6, shape[3] - 6)
            labels[t, z, 4:-4, c:c + 2] = 1
    images = (rng.normal(60, 15, shape) + 90 * labels).clip(0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    images, labels = synthetic((3, 2, 48, 48))
    roi = np.zeros((1, 1, 48, 48), np.uint8)
    roi[0, 0, 2:46, 2:46] = 1
    make_store(root / "i.zarr", images)
    make_store(root / "t.zarr", labels)
    make_store(root / "roi.zarr", roi)
    return root, images, labels, roi


@pytest.fixture(scope="module")
def trained(data):
    """One tiny model trained through the CLI (3 time points: the last one validates)."""
    from volseg_cli.main import main

    root = data[0]
    out = root / "m.keras"
    code = main(["train", "--images", str(root / "i.zarr"), "--truth", str(root / "t.zarr"),
                 "-o", str(out), "--roi", str(root / "roi.zarr"), "--epochs", "3",
                 "--steps-per-epoch", "8", "--learning-rate", "0.003", "-q", *TINY])
    assert code == 0
    return out


def test_losses_respect_weights():
    y = np.zeros((1, 4, 4, 2), np.float32)
    y[..., 0] = 1.0
    p = np.full((1, 4, 4, 1), 0.9, np.float32)
    p[0, 0, 0, 0] = 0.01  # a bad pixel ...
    y[..., 1] = 1.0
    full = {k: float(make_loss(k)(y, p)) for k in ("bce", "dice", "bce+dice")}
    y[0, 0, 0, 1] = 0.0  # ... that the weight map switches off
    masked = {k: float(make_loss(k)(y, p)) for k in ("bce", "dice", "bce+dice")}
    assert masked["bce"] == pytest.approx(-np.log(0.9), rel=1e-4)
    for k in full:
        assert masked[k] < full[k]
    assert full["bce+dice"] == pytest.approx(full["bce"] + full["dice"], rel=1e-5)
    with pytest.raises(InputError):
        make_loss("focal")


@pytest.mark.slow
def test_loss_goes_down(data, tmp_path):
    root = data[0]
    summary = train(root / "i.zarr", root / "t.zarr", tmp_path / "m.keras", epochs=4,
                    steps_per_epoch=8, patch=32, batch=4, filters=4, depth=2,
                    learning_rate=3e-3, seed=1)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 4 and summary["steps"] == 32
    assert losses[-1] < 0.9 * losses[0]
    # At the best threshold (the one training stores): after 32 steps the batch-norm
    # moving statistics still lag, so Dice at 0.5 can stay 0 while the model learns.
    assert summary["history"][-1]["val_best_dice"] > summary["history"][0]["val_best_dice"]
    # the kept epoch is the one whose Dice at its own best threshold is highest (what the
    # saved model, with its stored threshold, gives), not the one best at 0.5
    by_epoch = {h["epoch"]: h["val_best_dice"] for h in summary["history"]}
    assert by_epoch[summary["best_epoch"]] == pytest.approx(max(by_epoch.values()), abs=1e-4)


@pytest.mark.slow
def test_cli_writes_a_loadable_model(trained, data):
    root, images, labels, roi = data
    model, info = load_model(trained)
    assert info["format"] == "volseg-model" and info["multiple"] == 4
    assert info["architecture"] == {"base_filters": 4, "depth": 2,
                                    "dropout": TrainConfig.dropout, "batch_norm": True}
    assert info["patch"] == [32, 32] and info["input_dtype"] == "uint8"
    assert info["training"]["split"] == {"by": "timepoints", "val_indices": [2],
                                         "train_frames": 4, "val_frames": 2,
                                         "validated_frames": [[2, 0], [2, 1]]}
    assert info["provenance"]["roi"]["shape"] == [1, 1, 48, 48]
    # normalisation: the 0.5 / 99.5 percentiles of training pixels inside the ROI
    train_px = images[:2, :, 2:46, 2:46]
    lo, hi = np.percentile(train_px, [0.5, 99.5], method="inverted_cdf")
    assert info["normalization"] == {"low": float(lo), "high": float(hi)}
    for suffix in (".history.csv", ".history.json", ".curves.png"):
        assert (root / f"m{suffix}").stat().st_size > 0
    history = json.loads((root / "m.history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    out = np.asarray(model.predict_on_batch(images[2, :, :, :, None].astype(np.float32)))
    assert out.shape == (2, 48, 48, 1)


@pytest.mark.slow
def test_a_run_that_ends_by_its_epochs_has_no_warning(trained):
    record = read_model_info(trained)["training"]
    assert record["stop_reason"] == "epochs" and "warning" not in record
    # what trained it, recorded beside how
    assert record["compile"] in ("graph", "xla") and record["cpu"]


@pytest.mark.slow
def test_stored_threshold_maximises_val_dice(trained, data):
    _, images, labels, roi = data
    model, info = load_model(trained)
    # Validation = time point 2, inside the ROI; 48 is a multiple of 4: one tile, no padding.
    prob = np.asarray(model.predict_on_batch(images[2, :, :, :, None].astype(np.float32)))[..., 0]
    inside = np.broadcast_to(roi[0, 0] > 0, prob.shape)
    # As `volseg predict` stores them: uint8 levels, mask = level >= threshold_bin(t).
    p, truth = quantise(prob)[inside], labels[2][inside].astype(bool)

    def dice(level):
        pred = p >= level
        return 2 * np.sum(pred & truth) / (pred.sum() + truth.sum())

    stored = info["threshold"]
    level = threshold_bin(stored)
    assert stored == level / 255  # the stored threshold names exactly one level
    best = dice(level)
    assert best >= max(dice(k) for k in range(256)) - 1e-12  # exact over every level
    assert best >= dice(threshold_bin(0.5))
    assert info["training"]["val_dice"] == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
def test_init_continues_from_a_model(trained, data, tmp_path):
    root = data[0]
    summary = train(root / "i.zarr", root / "t.zarr", tmp_path / "ft.keras", init=trained,
                    epochs=1, steps_per_epoch=2, patch=32, batch=2, filters=99, depth=9)
    info = read_model_info(tmp_path / "ft.keras")
    assert info["architecture"]["base_filters"] == 4  # from the init model, not the arguments
    assert info["provenance"]["init"]["sha256"] == file_sha256(trained)
    assert info["normalization"] == read_model_info(trained)["normalization"]
    assert summary["steps"] == 2


def test_time_limit_stops_cleanly(data, tmp_path, cli):
    root = data[0]
    lines = []
    summary = train(root / "i.zarr", root / "t.zarr", tmp_path / "m.keras", epochs=1000,
                    steps_per_epoch=5, patch=32, batch=2, filters=2, depth=2,
                    time_limit=0.2, patience=1000, compile="graph", log=lines.append)
    assert summary["stop_reason"] == "time limit"
    assert summary["seconds"] < 12 + 8
    record = load_model(tmp_path / "m.keras")[1]["training"]
    assert record["stop_reason"] == "time limit"
    # far from its 5000 steps: said at the end, kept in the model, shown by `info`
    assert summary["warning"].startswith("the time limit stopped training after ")
    assert "of 5000 steps" in summary["warning"] and "--time-limit" in summary["warning"]
    assert f"warning: {summary['warning']}" in lines
    assert record["warning"] == summary["warning"]
    code, out, _ = cli("info", tmp_path / "m.keras")
    assert code == 0 and f"warning: {summary['warning']}" in out


def test_bad_inputs_exit_2(data, tmp_path, cli):
    root, images, labels, _ = data
    base = ["train", "--images", root / "i.zarr", "--truth", root / "t.zarr", *TINY]
    code, _, err = cli("train", "--images", tmp_path / "nope.zarr", "--truth", root / "t.zarr",
                       "-o", tmp_path / "m.keras")
    assert code == 2 and "nope.zarr" in err and "Traceback" not in err
    make_store(tmp_path / "small.zarr", labels[:, :, :40])
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", tmp_path / "small.zarr",
                       "-o", tmp_path / "m.keras")
    assert code == 2 and "shape" in err
    bad = labels.copy()
    bad[0, 0, 0, 0] = 7
    make_store(tmp_path / "bad.zarr", bad)
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", tmp_path / "bad.zarr",
                       "-o", tmp_path / "m.keras", *TINY)
    assert code == 2 and "values 0, 1, 7, not 0/1" in err
    code, _, err = cli(*base[:5], "-o", tmp_path / "m.keras", "--patch", "30")
    assert code == 2 and "--patch" in err
    code, _, err = cli(*base, "-o", tmp_path / "m.h5")
    assert code == 2 and ".keras" in err
    (tmp_path / "exists.keras").write_bytes(b"x")
    code, _, err = cli(*base, "-o", tmp_path / "exists.keras")
    assert code == 2 and "--overwrite" in err
    code, _, err = cli(*base, "-o", tmp_path / "m.keras", "--val-frames", "0")
    assert code == 2 and "--val-frames" in err
    code, _, err = cli(*base, "-o", tmp_path / "m.keras", "--init", tmp_path / "exists.keras")
    assert code == 2 and "exists.keras" in err
    (tmp_path / "dir.keras").mkdir()  # found before training, not when saving hours later
    code, _, err = cli(*base, "-o", tmp_path / "dir.keras", "--overwrite")
    assert code == 2 and "dir.keras is a folder" in err
    # "unlabelled" as -1 is not foreground
    minus = labels.astype(np.int8)
    minus[:, :, :4] = -1
    make_store(tmp_path / "minus.zarr", minus)
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", tmp_path / "minus.zarr",
                       "-o", tmp_path / "m.keras", *TINY)
    assert code == 2 and "values -1, 0, 1, not 0/1" in err, err
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_diverged_training_saves_nothing(data, tmp_path, cli):
    """A loss gone to NaN: the outputs are NaN, and a model picked on them would be
    garbage with a plausible Dice (threshold 0: everything foreground)."""
    root = data[0]
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", root / "t.zarr",
                       "-o", tmp_path / "m.keras", *TINY, "--learning-rate", "1e30",
                       "--precision", "float32", "--epochs", "2", "--steps-per-epoch", "3")
    assert code == 2 and "training diverged" in err and "--learning-rate" in err, err
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_stop_signal_ends_training_after_the_current_step(data, tmp_path):
    # What a remote cancellation does: request a stop from the progress callback.
    stop = StopSignal()
    lines = []

    def progress(done, total):
        if done == 3:
            stop.request()

    summary = train(data[0] / "i.zarr", data[0] / "t.zarr", tmp_path / "m.keras", epochs=50,
                    steps_per_epoch=8, patch=32, batch=2, filters=2, depth=2, stop=stop,
                    progress=progress, log=lines.append)
    assert summary["stop_reason"] == "interrupted"
    assert summary["epochs_run"] == 1 and summary["steps"] == 3  # epoch 1 validated, kept
    assert "interrupted: keeping the best model so far" in lines
    # the speed and the whole run's length are said once, after the first measured steps
    said = [line for line in lines if "samples/s on this machine" in line]
    assert len(said) == 1 and re.match(r"[\d.]+ samples/s on this machine: the 400 steps "
                                       r"\(50 epochs\) take about \d+ (s|min) more$", said[0])
    assert read_model_info(tmp_path / "m.keras")["training"]["stop_reason"] == "interrupted"


def test_stop_signal_keeps_the_first_reason():
    stop = StopSignal(time_limit=1e-6)
    assert not stop.requested
    assert stop.would_overrun(1.0) and stop.reason == "time limit"
    stop.request("interrupted")
    assert stop.reason == "time limit"
    other = StopSignal()
    with other.interruptible():
        raise KeyboardInterrupt
    assert other.reason == "interrupted" and not StopSignal().would_overrun(1e9)


@pytest.mark.parametrize("options, param, message", [
    (dict(batch=0), "batch", "must be at least 1, got 0"),
    (dict(precision="fp16"), "precision", "must be one of auto, float32, bfloat16, not 'fp16'"),
    (dict(loss="focal"), "loss", "must be one of bce, dice, bce+dice"),
    (dict(time_limit=-1), "time_limit", "must be positive minutes"),
    (dict(foreground_share=2), "foreground_share", "must be in [0, 1]"),
    (dict(patch="a"), "patch", "is not N or H,W"),
    (dict(learning_rate=float("nan")), "learning_rate", "must be a positive number"),
    (dict(learning_rate=0), "learning_rate", "must be a positive number"),
    (dict(dropout=1.5), "dropout", "must be in [0, 1)"),
    (dict(time_limit=float("nan")), "time_limit", "must be a number of minutes"),
    (dict(workers=0), "workers", "must be at least 1, got 0"),
])
def test_config_errors_name_the_parameter(options, param, message):
    with pytest.raises(InputError) as exc:
        TrainConfig("i.zarr", "t.zarr", "m.keras", **options)
    assert exc.value.param == param and message in exc.value.message


def test_sampler_threads_follow_what_trains():
    from volseg.training import resolve_machine_choices
    from volseg.training.config import sampler_threads

    # The CPU also runs the step: 2 threads; a GPU runs it: up to 8, never more than cores.
    assert sampler_threads(gpus=False, cores=16) == 2
    assert sampler_threads(gpus=True, cores=16) == 8
    assert sampler_threads(gpus=True, cores=3) == 3
    said = []
    default = resolve_machine_choices(TrainConfig("i", "t", "m"), said.append)
    assert default.workers == 2  # no GPU here
    assert resolve_machine_choices(TrainConfig("i", "t", "m", workers=5), said.append).workers == 5


def test_remote_checks_are_trains_checks(data, tmp_path):
    # A patch that does not fit the depth, found before any job would be submitted,
    # with the error train itself gives.
    root = data[0]
    args = (root / "i.zarr", root / "t.zarr", tmp_path / "m.keras")
    with pytest.raises(InputError) as remote:
        check_train_inputs(*args, patch=30, depth=2)
    with pytest.raises(InputError) as local:
        train(*args, patch=30, depth=2)
    assert remote.value.param == local.value.param == "patch"
    assert remote.value.message == local.value.message == \
        "30x30 must be multiples of 4 (2**depth for depth 2)"
    assert not (tmp_path / "m.keras").exists()


def test_cli_names_the_flag(data, tmp_path, cli):
    root = data[0]
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", root / "t.zarr",
                       "-o", tmp_path / "m.keras", "--batch", "0")
    assert (code, err) == (2, "volseg train: error: --batch: must be at least 1, got 0\n")
    code, _, err = cli("train", "--images", root / "i.zarr", "--truth", root / "t.zarr",
                       "-o", tmp_path / "m.h5")
    assert code == 2 and err == ("volseg train: error: -o: the model file must end in "
                                 ".keras, not 'm.h5'\n")


def test_a_batch_that_cannot_fit_is_refused_before_training(data, tmp_path, cli):
    from volseg.testing import assert_refused
    from volseg.training.config import available_memory, step_bytes

    root = data[0]
    line = assert_refused(cli("train", "--images", root / "i.zarr", "--truth", root / "t.zarr",
                              "-o", tmp_path / "m.keras", "--patch", "256", "--batch",
                              "100000"), "--batch", "GiB", "use --batch")
    fits = int(line.split("use --batch ")[1].split()[0])
    one = step_bytes(patch=(256, 256), batch=1, filters=8)
    # the largest batch that fits the memory available (which moves a little meanwhile)
    assert 1 <= fits and fits * one <= 1.2 * available_memory()
    assert not (tmp_path / "m.keras").exists()

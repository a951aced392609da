"""volseg.evaluate and `volseg evaluate` on real Zarr stores, against scikit-learn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from volseg.io import store
from volseg.errors import InputError
from volseg.stages.evaluate import evaluate, plan_blocks

RATIOS = ("accuracy", "sensitivity", "specificity", "precision", "dice", "iou", "mcc",
          "balanced_accuracy")
DESIGN_KEYS = ("tp fp tn fn accuracy sensitivity specificity precision dice iou mcc roc_auc "
               "pr_auc best_threshold voxels").split()


# --------------------------------------------------------------------------- stores

def _job(**parameters):
    return store.make_job("test", parameters=parameters)


def write_image(path, data, *, chunks=None, shards=None, complete=True):
    s = store.create_image(path, shape=data.shape, dtype=data.dtype, chunks=chunks,
                           shards=shards, job=_job(name=str(path)))
    s.array[...] = data
    if complete:
        store.finish(s.group)
    return path


def write_prediction(path, prob, *, threshold=0.5, chunks=None, shards=None,
                     probability=True, mask=None, complete=True, job=None):
    shape = prob.shape
    dchunks, dshards = store.default_chunks(shape, np.uint8)
    p = store.create_prediction(path, shape=shape, chunks=chunks or dchunks,
                                shards=shards or dshards, job=job or _job(name=str(path)),
                                probability=probability, threshold=threshold)
    if mask is None:
        mask = (prob >= np.ceil(threshold * 255)).astype(np.uint8)
    p.mask.array[...] = mask
    store.finish(p.mask.group)
    if probability:
        p.probability.array[...] = prob
        store.finish(p.probability.group)
    if complete:
        store.finish(p.group)
    return path


def make_data(seed=0, shape=(3, 4, 29, 37), fg=0.1):
    rng = np.random.default_rng(seed)
    truth = (rng.random(shape) < fg).astype(np.uint8)
    truth[1] = 0  # a time point without structure: Dice etc. are null there
    prob = np.clip(rng.normal(70 + 110 * truth, 55), 0, 255).astype(np.uint8)
    prob[1] //= 3  # ... and nothing predicted there: Dice and precision are null too
    return truth, prob


@pytest.fixture
def stores(tmp_path):
    truth, prob = make_data()
    pred = write_prediction(tmp_path / "pred.zarr", prob)
    tru = write_image(tmp_path / "truth.zarr", truth)
    return pred, tru, truth, prob


def reference(truth, pred, prob=None):
    y, p = truth.ravel(), pred.ravel()
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
    ref = {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
           "accuracy": skm.accuracy_score(y, p), "sensitivity": skm.recall_score(y, p),
           "specificity": skm.recall_score(y, p, pos_label=0),
           "precision": skm.precision_score(y, p), "dice": skm.f1_score(y, p),
           "iou": skm.jaccard_score(y, p), "mcc": skm.matthews_corrcoef(y, p),
           "balanced_accuracy": skm.balanced_accuracy_score(y, p)}
    if prob is not None:
        ref["roc_auc"] = skm.roc_auc_score(y, prob.ravel())
        ref["pr_auc"] = skm.average_precision_score(y, prob.ravel())
    return ref


def assert_matches(got, ref):
    for k in ("tp", "fp", "tn", "fn"):
        assert got[k] == ref[k], k
    for k in RATIOS:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k
    for k in ("roc_auc", "pr_auc"):
        if k in ref:
            assert got[k] == pytest.approx(ref[k], abs=1e-3), k


def metric_part(report):
    """What must not depend on chunking or workers (not timings, not block counts)."""
    drop = {"seconds", "voxels_per_second", "blocks", "prediction", "truth", "roi"}
    return {k: v for k, v in report.items() if k not in drop}


# --------------------------------------------------------------------------- library

def test_evaluate_matches_sklearn(stores):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru)
    assert set(DESIGN_KEYS) <= set(r)
    assert r["voxels"] == truth.size
    assert r["threshold"] == 0.5 and r["confusion_source"] == "mask"
    assert_matches(r, reference(truth, prob >= 128, prob))
    assert len(r["per_timepoint"]) == truth.shape[0]
    json.dumps(r, allow_nan=False)  # plain JSON types, no NaN


def test_per_timepoint_equals_each_time_point_alone(tmp_path, stores):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru)
    for t, row in enumerate(r["per_timepoint"]):
        assert row["t"] == t
        alone = evaluate(write_prediction(tmp_path / f"p{t}.zarr", prob[t:t + 1]),
                         write_image(tmp_path / f"t{t}.zarr", truth[t:t + 1]))
        for k in DESIGN_KEYS + list(RATIOS):
            assert row[k] == alone[k], (t, k)
        if truth[t].any():
            assert_matches(row, reference(truth[t], prob[t] >= 128, prob[t]))
    empty = r["per_timepoint"][1]  # no structure at t=1
    assert empty["dice"] is None and empty["sensitivity"] is None and empty["roc_auc"] is None
    assert empty["specificity"] == 1.0


def test_per_z(stores):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru, per_z=True)
    assert [row["z"] for row in r["per_z"]] == list(range(truth.shape[1]))
    for z, row in enumerate(r["per_z"]):
        assert_matches(row, reference(truth[:, z], prob[:, z] >= 128, prob[:, z]))
    # per-z counting per frame gives the same totals as counting whole time points
    assert metric_part({k: v for k, v in r.items() if k != "per_z"}) == metric_part(evaluate(pred, tru))


def test_identical_whatever_the_chunking(tmp_path, stores):
    pred, tru, truth, prob = stores
    base = metric_part(evaluate(pred, tru))
    p2 = write_prediction(tmp_path / "p2.zarr", prob, chunks=(1, 1, 16, 16), shards=(1, 2, 32, 32))
    t2 = write_image(tmp_path / "t2.zarr", truth, chunks=(1, 3, 29, 37), shards=(3, 3, 29, 37))
    assert metric_part(evaluate(p2, t2)) == base
    # tiny evaluation blocks (one shard each) give the same result
    assert metric_part(evaluate(p2, t2, target_voxels=1)) == base


def test_identical_whatever_the_number_of_workers(stores):
    from volseg.engine.cluster import open_client

    pred, tru, truth, prob = stores
    base = metric_part(evaluate(pred, tru, per_z=True))
    for workers in (1, 2):
        with open_client("local", workers=workers, threads=1) as client:
            r = evaluate(pred, tru, per_z=True, client=client, target_voxels=1)
        assert metric_part(r) == base, workers
        assert r["blocks"] > 2


def test_roi_restricts_counts_exactly(tmp_path, stores):
    pred, tru, truth, prob = stores
    rng = np.random.default_rng(3)
    roi = np.zeros(truth.shape, np.uint8)
    roi[:, :, 5:25, 3:30] = 1  # a field of view ...
    roi &= (rng.random(truth.shape) < 0.9).astype(np.uint8)  # ... with holes
    r = evaluate(pred, tru, roi_path=write_image(tmp_path / "roi.zarr", roi))
    inside = roi.astype(bool)
    assert r["voxels"] == int(inside.sum())
    assert_matches(r, reference(truth[inside], prob[inside] >= 128, prob[inside]))


def test_roi_of_one_time_point_and_slice_applies_to_all(tmp_path, stores):
    pred, tru, truth, prob = stores
    field = np.zeros((1, 1) + truth.shape[2:], np.uint8)
    field[..., 5:25, 3:30] = 255  # 0/255, as a field-of-view mask often is
    r = evaluate(pred, tru, roi_path=write_image(tmp_path / "fov.zarr", field))
    inside = np.broadcast_to(field > 0, truth.shape)
    assert r["voxels"] == int(inside.sum())
    assert_matches(r, reference(truth[inside], prob[inside] >= 128, prob[inside]))


def test_prediction_made_inside_an_roi_says_so(tmp_path, stores):
    """Voxels predict left out read as background: evaluating without the ROI counts
    them as misses, which the report must say."""
    _, tru, truth, prob = stores
    job = _job(roi={"path": "fov.zarr", "fingerprint": None})
    pred = write_prediction(tmp_path / "in_roi.zarr", prob, job=job)
    r = evaluate(pred, tru)
    assert "predicted inside the ROI fov.zarr only" in r["note"] and "--roi" in r["note"]
    field = write_image(tmp_path / "fov.zarr", np.ones((1, 1) + truth.shape[2:], np.uint8))
    assert "note" not in evaluate(pred, tru, roi_path=field)


def test_other_threshold_counts_probability(stores):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru, threshold=0.3)
    assert r["threshold"] == 0.3 and r["stored_threshold"] == 0.5
    assert r["confusion_source"] != "mask" and "0.3" in r["note"]
    assert_matches(r, reference(truth, prob >= 0.3 * 255, prob))
    same = evaluate(pred, tru, threshold=0.5)
    assert same["confusion_source"] == "mask"


def test_counts_come_from_the_stored_mask(tmp_path):
    truth, prob = make_data(1)
    mask = np.zeros_like(truth)  # a mask that disagrees with the probabilities
    mask[0, 0, :5, :5] = 1
    r = evaluate(write_prediction(tmp_path / "p.zarr", prob, mask=mask),
                 write_image(tmp_path / "t.zarr", truth))
    assert r["tp"] + r["fp"] == 25
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(truth.ravel(), prob.ravel()), abs=1e-12)


def test_mask_only_prediction(tmp_path):
    truth, prob = make_data(2)
    pred = write_prediction(tmp_path / "p.zarr", prob, probability=False)
    tru = write_image(tmp_path / "t.zarr", truth)
    r = evaluate(pred, tru)
    for k in ("roc_auc", "pr_auc", "best_threshold"):
        assert r[k] is None
    assert r["histogram"] is None
    assert_matches(r, reference(truth, prob >= 128))
    with pytest.raises(InputError, match="no probability"):
        evaluate(pred, tru, threshold=0.3)


def test_cldice_in_report(stores):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru, cldice=True)
    assert 0.0 <= r["cldice"] <= 1.0
    assert all("cldice" in row for row in r["per_timepoint"])
    assert "cldice" not in evaluate(pred, tru)


def test_bad_inputs(tmp_path, stores):
    pred, tru, truth, prob = stores
    other = write_image(tmp_path / "small.zarr", truth[:2])
    with pytest.raises(InputError, match=r"\(2, 4, 29, 37\).*\(3, 4, 29, 37\)"):
        evaluate(pred, other)
    with pytest.raises(InputError, match="ROI shape"):
        evaluate(pred, tru, roi_path=other)
    with pytest.raises(InputError, match="outside"):
        evaluate(pred, tru, threshold=1.5)
    with pytest.raises(InputError, match="no such"):
        evaluate(tmp_path / "missing.zarr", tru)
    bad = truth.copy()
    bad[2, 3, 0, 0] = 255
    with pytest.raises(InputError, match=r"bad\.zarr: block t=2.*values 0, 1, 255, not 0/1"):
        evaluate(pred, write_image(tmp_path / "bad.zarr", bad))
    with pytest.raises(InputError, match="incomplete"):
        evaluate(write_prediction(tmp_path / "inc.zarr", prob, complete=False), tru)
    with pytest.raises(InputError, match="incomplete"):
        evaluate(pred, write_image(tmp_path / "inc_t.zarr", truth, complete=False))


def test_plan_blocks_cover_everything_once():
    for shape, block, threads in [((10, 1, 50, 60), (1, 1, 50, 60), 2),
                                  ((3, 40, 50, 60), (1, 8, 50, 60), 1),
                                  ((2, 3, 500, 300), (1, 1, 256, 300), 4)]:
        blocks = plan_blocks(shape, block, threads=threads, target_voxels=20000)
        cover = np.zeros(shape, np.uint8)
        for b in blocks:
            assert all(s.start % bs == 0 for s, bs in zip(b, block)), b  # shard-aligned
            cover[b] += 1
        assert (cover == 1).all()
        assert len(blocks) >= min(4 * threads, int(np.prod(
            [-(-n // bs) for n, bs in zip(shape, block)])))
    full = plan_blocks((2, 3, 500, 300), (1, 1, 256, 300), full_frames=True)
    assert all(b[2] == slice(0, 500) for b in full)


# --------------------------------------------------------------------------- CLI

def test_cli_writes_table_json_csv_plots(tmp_path, stores, cli):
    pred, tru, truth, prob = stores
    code, out, err = cli("evaluate", pred, "--truth", tru, "--json", tmp_path / "r.json",
                         "--csv", tmp_path / "t.csv", "--plots", tmp_path / "plots",
                         "--per-z", "--workers", "1", "--quiet")
    assert code == 0, err
    assert out == ""
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(DESIGN_KEYS) <= set(report)
    assert report["tp"] == int(((prob >= 128) & (truth == 1)).sum())
    with open(tmp_path / "t.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["t"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["dice"]) == pytest.approx(report["per_timepoint"][0]["dice"])
    assert rows[1]["dice"] == ""  # null: no structure at t=1
    assert (tmp_path / "t_per_z.csv").exists()
    for name in ("roc.png", "pr.png", "per_timepoint.png", "per_z.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    code, out, err = cli("evaluate", pred, "--truth", tru, "--workers", "1")
    assert code == 0, err
    assert "Dice (F1)" in out and "ROC AUC" in out and "predicted 1" in out


@pytest.mark.parametrize("case", ["shape", "threshold", "missing", "binary", "roi", "json_dir"])
def test_cli_bad_input_exits_2(tmp_path, stores, cli, case):
    pred, tru, truth, prob = stores
    args = ["evaluate", pred, "--truth", tru, "--workers", "1", "--quiet"]
    if case == "shape":
        args[3] = write_image(tmp_path / "small.zarr", truth[:, :2])
    elif case == "threshold":
        args += ["--threshold", "1.5"]
    elif case == "missing":
        args[1] = tmp_path / "nope.zarr"
    elif case == "binary":
        args[3] = write_image(tmp_path / "b.zarr", truth * 255)
    elif case == "roi":
        args += ["--roi", write_image(tmp_path / "roi.zarr", truth[:, :2])]
    elif case == "json_dir":
        args += ["--json", tmp_path / "no" / "such" / "r.json"]
    code, out, err = cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("volseg evaluate: error:")


def _brute_best(truth, prob):
    """Best level (ties: nearest 0.5, then higher) and its Dice by trying all 256."""
    found = []
    for k in range(256):
        pred = prob >= k
        tp = np.count_nonzero(pred & (truth == 1))
        den = np.count_nonzero(pred) + np.count_nonzero(truth)
        found.append((2 * tp / den if den else 0.0, -abs(2 * k - 255), k))
    dice, _, k = max(found)
    return k, dice


def test_per_timepoint_best_threshold_and_oracle_equal_brute_force(tmp_path, stores, cli):
    pred, tru, truth, prob = stores
    r = evaluate(pred, tru)
    levels, gains, pooled = {}, [], np.zeros(3, np.int64)  # tp, fp, fn
    for t, row in enumerate(r["per_timepoint"]):
        if not truth[t].any():
            assert row["best_threshold"] is None and row["best_dice_gain"] is None
            m = prob[t] >= 128  # keeps the operating threshold
        else:
            k, dice = _brute_best(truth[t], prob[t])
            levels[t] = k
            assert row["best_threshold"] == pytest.approx(k / 255)
            assert row["best_dice"] == pytest.approx(dice, abs=1e-12)
            ref = skm.f1_score(truth[t].ravel(), (prob[t] >= 128).ravel())
            assert row["best_dice_gain"] == pytest.approx(dice - ref, abs=1e-12)
            gains.append(dice - ref)
            m = prob[t] >= k
        pooled += (np.count_nonzero(m & (truth[t] == 1)), np.count_nonzero(m & (truth[t] == 0)),
                   np.count_nonzero(~m & (truth[t] == 1)))
    o = r["oracle_per_timepoint_threshold"]
    assert o["timepoints"] == len(levels) == 2
    assert o["mean_gain"] == pytest.approx(np.mean(gains), abs=1e-12)
    assert o["max_gain"] == pytest.approx(max(gains), abs=1e-12)
    tp, fp, fn = pooled
    assert o["pooled_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    assert o["pooled_gain"] == pytest.approx(o["pooled_dice"] - r["dice"], abs=1e-12)
    code, out, _ = cli("evaluate", pred, "--truth", tru, "--csv", tmp_path / "t.csv")
    assert code == 0 and "a threshold per time point, chosen on this data" in out
    assert f"+{o['mean_gain']:.4f}" in out
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["best_threshold"]) == pytest.approx(levels[0] / 255)
    assert float(rows[2]["best_dice"]) == pytest.approx(r["per_timepoint"][2]["best_dice"])


def test_the_printed_threshold_is_the_stored_one(tmp_path):
    # predict and train print 6 significant digits: 237/255 = 0.92941176... shows as
    # 0.929412, and that value given back must count the stored mask, not level 238's
    truth, prob = make_data(3)
    stored = 237 / 255
    pred = write_prediction(tmp_path / "p.zarr", prob, threshold=stored)
    tru = write_image(tmp_path / "t.zarr", truth)
    r = evaluate(pred, tru, threshold=float(f"{stored:g}"))
    assert f"{stored:g}" == "0.929412" and r["confusion_source"] == "mask"
    assert evaluate(pred, tru, threshold=0.93)["confusion_source"] != "mask"

"""The Python API for notebooks and scripts: one function per command.

``volseg.convert``, ``volseg.train``, ``volseg.predict``, ``volseg.evaluate`` and
``volseg.verify`` call the functions below; ``volseg.open`` gives a store as a lazily
loaded, labelled array. Every store may be a path or a URL (``s3://``, ``https://``);
``storage_options=`` (a dict) is what the command line's ``--storage-options`` is.
They take the command line's options under the library's
parameter names (``--batch`` is ``batch_size``, see each function), show a progress
bar (a widget in Jupyter, text elsewhere; ``progress=False`` for none, or a callable
``progress(done, total)``), return what the command prints as a dict, and raise
:class:`volseg.InputError` for bad input, naming the parameter.

Nothing heavy is imported before a function runs: ``import volseg`` stays fast, and
TensorFlow loads only when a U-Net trains or predicts.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from volseg.errors import InputError

__all__ = ["convert", "train", "predict", "evaluate", "suggest", "verify", "export_model",
           "open"]


class _Bar:
    """``progress(done, total)`` drawn with tqdm's automatic front end (a widget in Jupyter)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or done < self.bar.n:  # a new epoch restarts the count
            self.close()
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _storage(options) -> None:
    """``storage_options=``: fsspec/s3fs options for URL stores (``s3://``, ``https://``),
    process-wide from now on (see :mod:`volseg.io.location`); None keeps what is set (by
    default the AWS_* environment)."""
    if options is not None:
        from volseg.io.location import set_storage_options

        set_storage_options(options)


@contextmanager
def _progress(progress, desc: str):
    """The ``progress`` callable for a library function: a bar, the caller's, or None."""
    if progress is True:
        bar = _Bar(desc)
        try:
            yield bar
        finally:
            bar.close()
    else:
        yield progress or None


def convert(inputs, out, *, mask: bool = False, overwrite: bool = False, progress=True,
            storage_options=None, **options) -> dict:
    """TIFF stacks to an OME-Zarr image store (``volseg convert``).

    Parameters
    ----------
    inputs : path-like or list of path-like
        A folder of per-frame TIFFs, multi-page TIFFs (one per time point) or a hyperstack.
    out : path-like
        The store to write; an interrupted conversion of the same inputs resumes.
    mask : bool
        Annotations (0/1 or 0/255), stored as uint8 0/1.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    progress : bool or callable
    **options
        ``like`` (an image store: the files annotate some of its frames, placed by the
        t and z in their names, the rest stored as not annotated), ``scribbles`` (0 not
        annotated, 1 structure, 2 background), ``update`` (add frames to the existing
        truth store ``out``), ``pattern``, ``channel``, ``chunks``, ``allow_gaps``,
        ``nonfinite``, ``pyramid``, ``client``
        (see :func:`volseg.stages.convert.convert`).

    Returns
    -------
    dict
        Shape, dtype, chunks, shards, blocks written and skipped.
    """
    _storage(storage_options)
    from volseg.stages.convert import convert as run

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    with _progress(progress, "convert") as bar:
        return run(inputs, out, mask=mask, overwrite=overwrite, progress=bar, **options)


def train(images, truth, out, *, method: str = "unet", channel: int | None = None,
          series: int | None = None, overwrite: bool = False, progress=True, log=None,
          storage_options=None, **options) -> dict:
    """Train a model on image and truth stores (``volseg train``).

    Parameters
    ----------
    images, truth : path-like
        Image store and binary truth store of one (t, z, y, x) shape (volseg's, or any
        OME-NGFF image).
    out : path-like
        The model file (``.keras`` for a U-Net).
    method : {"unet", "forest"}
        A U-Net (TensorFlow), or the random-forest baseline (scikit-learn, minutes on a CPU).
    channel, series : int, optional
        The channel and bioformats2raw series of stores made by other tools.
    progress : bool or callable
        Steps per epoch (U-Net) or frames sampled (forest).
    log : callable(str), optional
        Receives one line per epoch and status lines (``print`` shows them).
    **options
        U-Net: the fields of :class:`volseg.training.TrainConfig` (``roi_path``,
        ``val_timepoints``, ``epochs``, ``patch``, ``batch``, ``filters``, ``time_limit``,
        ``precision``, ...). Forest: those of :func:`volseg.models.forest.train_forest`
        (``roi_path``, ``val_timepoints``, ``trees``, ``max_samples``, ...).

    Returns
    -------
    dict
        Paths, validation Dice, threshold and timings.
    """
    _storage(storage_options)
    common = dict(channel=channel, series=series, overwrite=overwrite, log=log, **options)
    if method == "forest":
        from volseg.models.forest import check_forest_context
        from volseg.training.forest import train_forest

        check_forest_context(common.pop("context", 1))

        with _progress(progress, "forest: sampling") as bar:
            return train_forest(images, truth, out, progress=bar, **common)
    if method != "unet":
        raise InputError(f"must be 'unet' or 'forest', got {method!r}", param="method")
    from volseg.training import train as run

    with _progress(progress, "epoch") as bar:
        return run(images, truth, out, progress=bar, **common)


def predict(images, model, out, *, threshold="auto", channel: int | None = None,
            series: int | None = None, overwrite: bool = False, progress=True,
            storage_options=None, **options) -> dict:
    """Segment every frame of an image store with a model (``volseg predict``).

    Parameters
    ----------
    images : path-like
        Image store (volseg's, or any OME-NGFF image or bioformats2raw root).
    model : path-like
        A model file from :func:`train` (U-Net or forest), or a BioImage Model Zoo
        package (``.zip``, folder or ``rdf.yaml``; :func:`export_model` writes one).
    out : path-like
        The prediction store (``probability`` and ``mask``); an interrupted one resumes.
    threshold : float or "auto"
        Mask threshold; "auto" is the model's.
    channel, series : int, optional
        The channel and bioformats2raw series to read.
    progress : bool or callable
    **options
        ``probability``, ``precision``, ``tile``, ``halo``, ``batch_size``, ``pyramid``,
        ``labels_into``, ``tta`` (test-time augmentation: 8x the work), ``client``
        (see :func:`volseg.stages.predict.predict`).

    Returns
    -------
    dict
        Blocks computed and skipped, threshold, pixels.
    """
    _storage(storage_options)
    from volseg.stages.predict import predict as run

    with _progress(progress, "predict") as bar:
        return run(images, model, out, threshold=threshold, channel=channel, series=series,
                   overwrite=overwrite, progress=bar, **options)


def evaluate(prediction, truth, *, roi=None, threshold=None, channel: int | None = None,
             series: int | None = None, json=None, csv=None, plots=None,
             overwrite: bool = False, progress=True, storage_options=None,
             **options) -> dict:
    """Exact metrics of a prediction over every voxel (``volseg evaluate``).

    Parameters
    ----------
    prediction, truth : path-like
        Prediction store and binary truth store (volseg's or any OME-NGFF 0/1 image).
    roi : path-like, optional
        Count only voxels where this store is nonzero.
    threshold : float, optional
        Default: the stored mask.
    channel, series : int, optional
        The channel and bioformats2raw series of truth and ROI stores.
    json, csv, plots : path-like, optional
        Also write the report, the per-time-point CSV, and the figures into a folder.
        Files there that volseg did not write are refused before any counting, as by
        ``volseg evaluate``.
    overwrite : bool
        Replace such files.
    progress : bool or callable
    **options
        ``per_z``, ``cldice``, ``client`` (see :func:`volseg.stages.evaluate.evaluate`).

    Returns
    -------
    dict
        The report (``dice``, ``roc_auc``, ``per_timepoint`` ...).
    """
    _storage(storage_options)
    from volseg.engine.outputs import check_report_files
    from volseg.stages import evaluate as ev
    from volseg.viz.figures import EVALUATION_FIGURES

    check_report_files(json=json, csv=csv, plots=plots, figures=EVALUATION_FIGURES,
                       overwrite=overwrite)
    with _progress(progress, "evaluate") as bar:
        report = ev.evaluate(prediction, truth, roi_path=roi, threshold=threshold,
                             channel=channel, series=series, progress=bar, **options)
    if json is not None:
        ev.write_json(report, json)
    if csv is not None:
        ev.write_csv(report, csv)
    if plots is not None:
        from volseg.viz.figures import evaluation_figures

        evaluation_figures(report, plots)
    return report


def suggest(prediction, *, truth=None, n: int = 10, progress=True, storage_options=None,
            **options) -> dict:
    """The frames to annotate next: those the model is least sure of, spread over time
    and depth, never one already annotated in ``truth`` (``volseg suggest``).

    Parameters
    ----------
    prediction : path-like
        A prediction store with probabilities.
    truth : path-like, optional
        The annotations so far.
    n : int
        How many frames.
    **options
        ``csv``, ``plots``, ``images``, ``templates`` (a folder: each pick's predicted mask
        as a label file to correct and give back with ``convert(..., mask=True,
        update=True)``), ``overwrite``, ``channel``, ``series``, ``client``
        (see :func:`volseg.stages.suggest.suggest`).

    Returns
    -------
    dict
        ``picks`` (rank, t, z, score, ...), ``candidates``, ``annotated_frames``, files.
    """
    _storage(storage_options)
    from volseg.stages.suggest import suggest as run

    with _progress(progress, "suggest") as bar:
        return run(prediction, truth=truth, n=n, progress=bar, **options)


def export_model(model, out, *, images=None, authors=None, license: str = "CC-BY-4.0",
                 name: str | None = None, overwrite: bool = False) -> dict:
    """A volseg U-Net as a BioImage Model Zoo package (``volseg export-model``).

    ``out`` is the ``.zip`` to write: ONNX and Keras weights, the normalisation as the
    spec's preprocessing, the tile halo, test tensors cut from ``images`` (default: the
    training images the model records), a cover, documentation, ``authors`` (default:
    this user's login name) and ``license`` (SPDX). The package validates with the
    bioimage.io spec library; ``volseg.predict(images, "PACKAGE.zip", out)`` runs it (or
    another 2D zoo model with one channel in and one probability out) over any store.

    Returns
    -------
    dict
        ``path``, ``name``, ``weights``, ``test_shape``, ``threshold``, ``halo``.
    """
    from volseg.stages.package import export_model as run

    return run(model, out, images=images, authors=authors, license=license, name=name,
               overwrite=overwrite)


def verify(store, *, channel: int | None = None, series: int | None = None, progress=True,
           storage_options=None, **options) -> dict:
    """Read every chunk of a store and name the damaged frames (``volseg verify``).

    Returns
    -------
    dict
        ``ok``, ``complete`` and per array the damaged frames
        (see :func:`volseg.stages.verify.verify_store`).
    """
    _storage(storage_options)
    from volseg.stages.verify import verify_store

    with _progress(progress, "verify") as bar:
        return verify_store(store, channel=channel, series=series, progress=bar, **options)


def open(path, *, array: str | None = None, channel: int | None = None,  # noqa: A001
         series: int | None = None, storage_options=None):
    """A store as a lazily loaded, labelled array: an ``xarray.DataArray`` over dask.

    Dims ``t, z, y, x``; coordinates in physical units (index x pixel size from the
    NGFF metadata, units in each coordinate's ``attrs``); ``attrs`` hold ``scale``,
    ``units``, the store's path and volseg's record. Nothing is read until you compute
    or plot, and then only the chunks needed, through volseg's checked reads (a damaged
    chunk raises :class:`volseg.errors.DamagedDataError`).

    Parameters
    ----------
    path : path-like
        An image store (volseg's or any OME-NGFF image) or a prediction store.
    array : {"mask", "probability"}, optional
        For a prediction store (default ``"mask"``).
    channel, series : int, optional
        The channel and bioformats2raw series of images made by other tools.
    """
    _storage(storage_options)
    import dask.array as da
    import numpy as np
    import xarray as xr

    from volseg.io import store as st

    obj = st.open_any(path, channel=channel, series=series)
    if isinstance(obj, st.Prediction):
        if array not in (None, "mask", "probability"):
            raise InputError(f"a prediction holds 'mask' and 'probability', not {array!r}",
                             param="array")
        image = obj.probability if array == "probability" else obj.mask
        if image is None:
            raise InputError(f"{path} has no probability array (mask only)", param="array")
    else:
        image = obj
    if image.made_by_volseg and not image.complete:
        raise InputError(f"{image.path}: incomplete (an interrupted run?); rerun the command "
                         "that made it to finish it")
    checked = image.array
    data = da.from_array(checked, chunks=checked.chunks, asarray=True, lock=False,
                         meta=np.empty((0,) * 4, checked.dtype), name=False)
    units = image.units
    coords = {a: xr.Variable(a, np.arange(n) * s, attrs={"units": units[a]} if a in units else {})
              for a, n, s in zip(st.AXES, checked.shape, image.scale)}
    attrs = {"path": str(image.path), "scale": dict(zip(st.AXES, image.scale)), "units": units,
             "volseg": image.volseg}
    return xr.DataArray(data, dims=st.AXES, coords=coords, name=image.path.name, attrs=attrs)

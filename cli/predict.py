"""volseg predict: images -> probability and mask, on a local or Slurm Dask cluster."""

import argparse

from volseg.models.unet import PRECISION_CHOICES

from ._cluster import add_cluster_arguments, cluster_kwargs
from ._progress import command_line
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "predict", help="segment an image store with a trained model",
        description="Stream every frame of IMAGES.zarr through the U-Net and write "
                    "PRED.zarr/probability (uint8, value/255) and PRED.zarr/mask (uint8 0/1). "
                    "Rerunning an interrupted prediction resumes it, skipping finished blocks.")
    p.add_argument("images", metavar="IMAGES.zarr",
                   help="image store from `volseg convert`, or any OME-NGFF image")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model from `volseg train` (a U-Net or a forest: told apart by "
                        "content), or a BioImage Model Zoo package (.zip or rdf.yaml; run "
                        "with ONNX Runtime)")
    p.add_argument("-o", "--output", required=True, metavar="PRED.zarr")
    p.add_argument("--threshold", default="auto",
                   help="mask threshold in [0, 1], or 'auto' for the model's (default)")
    p.add_argument("--no-probability", action="store_true", help="write only the mask")
    p.add_argument("--roi", metavar="ROI.zarr",
                   help="mask store: blocks entirely outside it are written as zeros without "
                        "running the model, pixels outside it are zero")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="inference precision; bfloat16 is ~1.5x faster where the hardware "
                        "computes it natively (AVX-512 BF16, AMX, GPUs from Ampere on); auto "
                        "(default) uses it there and float32 elsewhere; float32 runs on ONNX "
                        "Runtime (~1.6x TensorFlow on CPUs), bfloat16 on TensorFlow")
    p.add_argument("--batch", type=int, default=4,
                   help="tiles per model call on a GPU (default 4; there the last bits may "
                        "differ between batch sizes); on a CPU each tile is one call, so the "
                        "output is the same whatever --batch")
    p.add_argument("--tile", default=None, metavar="H,W",
                   help="largest tile (default: whole frames up to ~1.1 Mpx)")
    p.add_argument("--halo", type=int, default=None,
                   help="context margin of tiles in px (default: the model's margin)")
    p.add_argument("--pyramid", action=argparse.BooleanOptionalAction, default=None,
                   help="also write downsampled levels 1, 2, ... (y and x halved per level "
                        "until a frame fits in 256 px; images and probabilities by mean, masks "
                        "by max) so viewers stay responsive; default: on for frames larger "
                        "than 1024 px on a side")
    p.add_argument("--labels-into-images", dest="labels_into", metavar="NAME", default=None,
                   help="also copy the mask into IMAGES.zarr/labels/NAME, an NGFF label image "
                        "(image and segmentation open together in napari); IMAGES.zarr is "
                        "otherwise unchanged")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation (U-Net only): average each tile's probabilities "
                        "over its 8 rotations and mirror images; 8x the model's work (see the "
                        "README for what it buys)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PRED.zarr (and label image NAME)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_select_arguments(p)
    add_cluster_arguments(p, default_workers_help="one process per 2 usable cores",
                          default_threads_help="1: one block at a time, TensorFlow runs 2 "
                                               "threads in each process, so a prediction is "
                                               "the same whatever the cores and workers")
    p.set_defaults(run=run)
    return p


def parse_tile(text):
    from volseg.errors import InputError

    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--tile: expected H,W (e.g. 1024,1024), got {text!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"--tile: sizes must be positive, got {text!r}")
    return h, w


def run(args) -> int:
    import time

    from volseg.engine.cluster import gpu_resources, open_client
    from volseg.stages.predict import LOCAL_THREADS, local_workers, predict

    command = command_line()
    tile = parse_tile(args.tile)
    kw = cluster_kwargs(args)
    if kw["cluster"] == "local" and kw["threads"] is None:
        kw["threads"] = LOCAL_THREADS
    if kw["cluster"] == "local" and kw["workers"] is None:
        kw["workers"] = local_workers()
    start = time.monotonic()
    with open_client(**kw, log=lambda m: say(args, m)) as client, \
            Progress("predict", quiet=args.quiet) as progress:
        summary = predict(args.images, args.model, args.output, threshold=args.threshold,
                          **select_kwargs(args), probability=not args.no_probability,
                          precision=args.precision, tile=tile, halo=args.halo,
                          batch_size=args.batch, roi=args.roi, pyramid=args.pyramid,
                          labels_into=args.labels_into, tta=args.tta,
                          overwrite=args.overwrite, client=client,
                          resources=gpu_resources(client), progress=progress, command=command,
                          log=lambda m: say(args, m))
    seconds = time.monotonic() - start
    px = summary["pixels"] * summary["computed"] / max(summary["blocks"], 1)
    roi = f", {summary['roi_skipped']} outside --roi not run" if args.roi else ""
    say(args, f"wrote {summary['path']}: {summary['computed']} blocks predicted{roi}, "
              f"{summary['skipped']} already done, threshold {summary['threshold']:g}"
              f"{', TTA' if summary.get('tta') else ''}; "
              f"{px / max(seconds, 1e-9) / 1e6:.2f} Mpx/s; complete")
    if summary.get("labels"):
        say(args, f"mask copied to {summary['labels']} (listed in its labels group)")
    return 0

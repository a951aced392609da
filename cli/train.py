"""volseg train: U-Net training on patches streamed from Zarr stores."""


from volseg.models.unet import COMPILE_CHOICES, PRECISION_CHOICES
from volseg.training.config import LOSSES, TrainConfig
from volseg.training.schedule import SCHEDULES

from ._progress import command_line
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs
from ._remote import add_slurm_options, trainer


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train a U-Net (or a random forest) on an image store and its truth store",
        description="Train a U-Net on patches read straight from Zarr (never whole arrays), "
                    "with foreground oversampling and augmentation. Validation holds out whole "
                    "time points (whole z-frames when there is one time point). Writes "
                    "MODEL.keras (weights, normalisation, threshold, provenance) and, beside "
                    "it, MODEL.history.csv/.json and MODEL.curves.png. With --method forest: "
                    "a random forest on multiscale filter features of a class-balanced pixel "
                    "sample (any file name; CPU only, minutes).")
    p.add_argument("--images", required=True, metavar="IMAGES.zarr", help="image store")
    p.add_argument("--truth", required=True, metavar="TRUTH.zarr", help="0/1 truth store")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.keras", help="model to write")
    p.add_argument("--roi", metavar="ROI.zarr",
                   help="mask store of where labels are valid (e.g. a field of view); patches, "
                        "loss and validation count only inside it")
    p.add_argument("--method", choices=("unet", "forest"), default="unet",
                   help="the U-Net (default) or the random-forest baseline")
    p.add_argument("--init", metavar="MODEL.keras",
                   help="continue from this model (fine-tuning); its architecture and intensity "
                        "normalisation are kept, --filters/--depth/--dropout are ignored")
    g = p.add_argument_group("validation")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of time points (or frames when T=1) held out, the last ones "
                        "(default %(default)s)")
    g.add_argument("--val-timepoints", metavar="LIST", help="held-out time points, e.g. 8-9 or 3,7")
    g.add_argument("--val-frames", metavar="LIST",
                   help="held-out z-frames when there is one time point, e.g. 14-19")
    g = p.add_argument_group("training")
    g.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss,
                   help="loss (default %(default)s: skeleton recall rewards finding thin "
                        "tubes whole; bce+dice is the loss before 2026-11-30)")
    g.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                   help="at most this many (default %(default)s)")
    g.add_argument("--steps-per-epoch", type=int, default=TrainConfig.steps_per_epoch,
                   help="default %(default)s")
    g.add_argument("--patch", default="256", metavar="N|H,W",
                   help="patch size, multiples of 2**depth (default %(default)s)")
    g.add_argument("--batch", type=int, default=TrainConfig.batch,
                   help="patches per step (default %(default)s)")
    g.add_argument("--filters", type=int, default=TrainConfig.filters,
                   help="filters of the first level (default %(default)s; 16 is the report's "
                        "network)")
    g.add_argument("--depth", type=int, default=TrainConfig.depth,
                   help="poolings (default %(default)s)")
    g.add_argument("--dropout", type=float, default=TrainConfig.dropout,
                   help="dropout rate after each pooling and skip concatenation (default "
                        "%(default)s; the report's network used 0.1)")
    g.add_argument("--context", type=int, default=TrainConfig.context, metavar="K",
                   help="depth context (2.5D): give the network K neighbouring z-slices of "
                        "the same time point as channels (odd; the edge slice is repeated at "
                        "the stack's ends). Helps when the structure continues across "
                        "neighbouring slices; costs K times the first layer's input reads. "
                        "predict reads K from the model (default %(default)s: the slice alone)")
    g.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate,
                   help="Adam's peak rate (default %(default)s)")
    g.add_argument("--schedule", choices=SCHEDULES, default=TrainConfig.schedule,
                   help="cosine (default): warm-up, then decay that ends with the run (the "
                        "time limit, else the last epoch); plateau: halve after 3 epochs "
                        "without a better validation Dice")
    g.add_argument("--foreground-share", type=float, default=TrainConfig.foreground_share,
                   help="share of patches centred on foreground (default 1/3)")
    g.add_argument("--no-augment", action="store_true", help="no flips, rotations or jitter")
    g.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after this many epochs without a better validation Dice "
                        "(default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="default %(default)s")
    g.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop in time, keeping the best model")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="training precision; bfloat16 (mixed) is ~1.4x faster on CPUs with "
                        "AVX-512 BF16 and much slower on CPUs without; auto (default) uses it "
                        "where the hardware computes it natively, else float32")
    g.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="how the training step is compiled: xla fuses the element-wise work "
                        "(1.3-1.5x faster on CPUs without AVX-512), graph is TensorFlow's "
                        "(faster on AVX-512 CPUs and GPUs); auto (default) picks by the "
                        "machine that trains and says which; on the JAX backend always xla")
    g.add_argument("--workers", type=int, default=None,
                   help="threads reading patches ahead of training (default 2; up to 8 "
                        "where a GPU trains)")
    g = p.add_argument_group("forest (--method forest)")
    g.add_argument("--trees", type=int, default=30, help="trees (default %(default)s)")
    g.add_argument("--max-samples", type=int, default=200_000,
                   help="training pixels at most, half of each class (default %(default)s)")
    add_select_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL.keras")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_slurm_options(p)
    p.set_defaults(run=run)
    return p


class _EpochProgress:
    """One bar per epoch: starts a new Progress whenever the step count restarts."""

    def __init__(self, quiet):
        self.quiet, self.bar, self.epoch, self.last = quiet, None, 0, None

    def __call__(self, done, total):
        if self.quiet:
            return
        if self.bar is None or self.last is None or done <= self.last:
            self.close()
            self.epoch += 1
            self.bar = Progress(f"epoch {self.epoch}", unit="step")
        self.last = done
        if done:  # (0, total) only starts the clock of a new epoch
            self.bar(done, total)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_forest(args, command) -> int:
    from volseg.training.forest import train_forest

    with Progress("forest: sampling", unit="frame", quiet=args.quiet) as progress:
        summary = train_forest(args.images, args.truth, args.output, roi_path=args.roi,
                               **select_kwargs(args),
                               val_fraction=args.val_fraction, val_timepoints=args.val_timepoints,
                               val_frames=args.val_frames, trees=args.trees,
                               max_samples=args.max_samples, seed=args.seed,
                               overwrite=args.overwrite, command=command, progress=progress,
                               log=lambda m: say(args, m))
    dice = "n/a" if summary["val_dice"] is None else f"{summary['val_dice']:.4f}"
    say(args, f"wrote {summary['path']}: random forest on {summary['samples']:,} pixels in "
              f"{summary['seconds']:.0f} s (threshold {summary['threshold']:g}, validation "
              f"Dice {dice})")
    return 0


def run(args) -> int:

    command = command_line()
    if args.method == "forest":
        from volseg.errors import InputError
        from volseg.models.forest import check_forest_context

        if args.cluster != "local":
            raise InputError("a forest trains on this machine in minutes; drop --cluster",
                             param="method")
        check_forest_context(args.context)
        return run_forest(args, command)
    progress = _EpochProgress(args.quiet)

    def log(message):
        progress.close()  # finish the bar before printing the epoch line
        say(args, message)

    try:
        summary = trainer(args)(
            args.images, args.truth, args.output, roi_path=args.roi, init=args.init,
            **select_kwargs(args),
            val_fraction=args.val_fraction, val_timepoints=args.val_timepoints,
            val_frames=args.val_frames, loss=args.loss, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, patch=args.patch, batch=args.batch,
            filters=args.filters, depth=args.depth, dropout=args.dropout, context=args.context,
            learning_rate=args.learning_rate, schedule=args.schedule,
            foreground_share=args.foreground_share,
            augment=not args.no_augment, patience=args.patience, seed=args.seed,
            time_limit=args.time_limit, precision=args.precision, compile=args.compile,
            workers=args.workers,
            overwrite=args.overwrite, command=command, progress=progress, log=log)
    finally:
        progress.close()
    say(args, f"wrote {summary['model']} (threshold {summary['threshold']:g}, validation Dice "
              f"{summary['val_dice']:.4f}), {summary['history_csv']}, {summary['curves']}")
    return 0

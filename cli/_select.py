"""The options that choose what to read from OME-Zarr stores made by other tools."""


def add_select_arguments(p) -> None:
    """``--channel`` and ``--series`` (see :func:`volseg.io.store.open_image`)."""
    g = p.add_argument_group("OME-Zarr from other tools")
    g.add_argument("--channel", type=int, metavar="C",
                   help="channel to read from images with a c axis (needed when they have "
                        "several); images without one ignore it")
    g.add_argument("--series", type=int, metavar="S",
                   help="series of a bioformats2raw store (default 0); other stores ignore it")


def select_kwargs(args) -> dict:
    """The library keywords of :func:`add_select_arguments`'s options."""
    return {"channel": args.channel, "series": args.series}

"""volseg export-model: a U-Net as a BioImage Model Zoo package."""

from volseg.stages.package import DEFAULT_LICENSE, export_model

from ._progress import say


def add_parser(sub):
    p = sub.add_parser(
        "export-model", help="write a U-Net as a BioImage Model Zoo package (.zip)",
        description="Write a volseg U-Net as a BioImage Model Zoo package (bioimage.io, model "
                    "spec 0.5): ONNX and Keras weights, the intensity normalisation as "
                    "preprocessing, the tile halo, test tensors cut from the training images "
                    "(or --images), a cover and documentation. deepImageJ (Fiji), ilastik, "
                    "QuPath and bioimageio.core run it; `volseg predict --model PACKAGE.zip` "
                    "runs it (or any 2D one-channel zoo model) over stores of any size.")
    p.add_argument("model", metavar="MODEL.keras", help="U-Net from `volseg train`")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE.zip",
                   help="the package to write")
    p.add_argument("--images", metavar="IMAGES.zarr",
                   help="image store to cut the test tensors from (default: the training "
                        "images the model records)")
    p.add_argument("--author", action="append", dest="authors", metavar="NAME",
                   help="an author of the model (repeat for several; default: your login "
                        "name)")
    p.add_argument("--license", default=DEFAULT_LICENSE, metavar="SPDX",
                   help="licence of the weights, an SPDX identifier (default %(default)s)")
    p.add_argument("--name", help="the package's name (default: 'volseg' and the model "
                                  "file's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    say(args, f"exporting {args.model} to {args.output}")
    summary = export_model(args.model, args.output, images=args.images, authors=args.authors,
                           license=args.license, name=args.name, overwrite=args.overwrite)
    say(args, f"wrote {summary['path']}: {summary['name']!r}, weights "
              f"{' and '.join(summary['weights'])}, test tensors {summary['test_shape']}, "
              f"halo {summary['halo']} px, threshold {summary['threshold']:.6g} (validated "
              "with the bioimage.io spec library)")
    return 0

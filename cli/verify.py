"""volseg verify: every chunk of a store present and intact, or the damaged frames named."""

import json
from contextlib import nullcontext

from ._cluster import add_cluster_arguments, cluster_kwargs
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "verify", help="check that every chunk of a store is present and intact",
        description="Read every chunk of each STORE (image, truth or prediction) and check "
                    "that it is present, passes its checksum and decodes. Prints the damaged "
                    "frames (t, z); exit 0 when every store is complete and intact, 2 otherwise.")
    p.add_argument("stores", nargs="+", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    add_select_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from volseg.engine.cluster import open_client
    from volseg.errors import InputError
    from volseg.stages.verify import verify_store

    kw = cluster_kwargs(args)
    results, bad = [], 0
    # Locally, threads of this process read and decode (both release the GIL).
    with open_client(**kw) if args.cluster == "slurm" else nullcontext() as client:
        for path in args.stores:
            try:
                with Progress(f"verify {path}", unit="shard", quiet=args.quiet) as progress:
                    result = verify_store(path, client=client, progress=progress,
                                          **select_kwargs(args))
            except InputError as exc:  # not a readable store at all
                result = {"path": str(path), "ok": False, "error": str(exc), "arrays": []}
            results.append(result)
            bad += not result["ok"]
            if not args.json:
                _print(args, result)
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if bad else 0


def _print(args, result) -> None:
    import sys

    if result.get("error"):
        print(f"{result['path']}: cannot verify: {result['error']}", file=sys.stderr)
        return
    if not result["complete"]:
        print(f"{result['path']}: INCOMPLETE (an interrupted run?); rerun the command that "
              "made it to finish it", file=sys.stderr)
    for a in result["arrays"]:
        if a["damaged"]:
            print(f"{result['path']}: DAMAGED: {a['message']}", file=sys.stderr)
        else:
            say(args, f"{result['path']} [{a['name']}]: ok, {a['chunks_checked']} chunks of "
                      f"{'x'.join(map(str, a['shape']))} checked ({a['checks']})")

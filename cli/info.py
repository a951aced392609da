"""volseg info: what a store holds."""

from volseg.errors import InputError
from volseg.stages.info import describe

from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser("info", help="describe a volseg store",
                       description="Shape, dtype, chunks, shards, codec, stored and raw size, "
                                   "completeness and provenance of an image or prediction store; "
                                   "kind, threshold and training record of a model file.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    import json

    info = describe(args.store, **select_kwargs(args))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for line in format_info(info):
            print(line)
    if info.get("damaged"):  # presence only (one stat per shard); `volseg verify` reads everything
        raise InputError(info["damaged"][0])
    return 0


def format_info(info, indent=""):
    if info["kind"].endswith("model"):
        return _format_model(info, indent)
    state = "complete" if info["complete"] else "INCOMPLETE"
    if not info.get("made_by_volseg", True):
        state = "made by another tool: no completion marker, read as it is"
    if info.get("damaged"):
        state += ", DAMAGED: chunks missing"
    lines = [f"{indent}{info['path']}  ({info['kind']}, {state})"]
    for arr in info.get("arrays", []):
        lines += [f"{indent}  {arr['name']}: shape {arr['shape']} (t, z, y, x), {arr['dtype']}",
                  f"{indent}    chunks {arr['chunks']}, shards {arr['shards']}, codec {arr['codec']}",
                  f"{indent}    stored {_size(arr['stored_bytes'])} of {_size(arr['raw_bytes'])} raw "
                  f"({arr['ratio']:.1f}x), {_state(arr)}",
                  *([f"{indent}    stored as: {arr['stored_as']}"] if arr.get("stored_as") else []),
                  f"{indent}    integrity: {arr['integrity']}"]
        for k, v in arr.get("attributes", {}).items():
            lines.append(f"{indent}    {k}: {v}")
    ann = info.get("annotation")
    if ann:
        per_t = ", ".join(f"t{t}: {100 * v:.0f} %" for t, v in enumerate(ann["per_timepoint"][:12]))
        more = " ..." if len(ann["per_timepoint"]) > 12 else ""
        lines += [f"{indent}  annotated: {100 * ann['share']:.1f} % of voxels, "
                  f"{ann['annotated_frames']} of {ann['frames']} frames hold annotations "
                  f"(value {ann['not_annotated']} = not annotated)",
                  f"{indent}    per time point: {per_t}{more}"]
    job = info.get("job") or {}
    if job:
        lines.append(f"{indent}  made by: {job.get('command') or job.get('kind')}")
        for k, v in (job.get("parameters") or {}).items():
            lines.append(f"{indent}    {k}: {v}")
        srcs = job.get("sources") or []
        if srcs:
            lines.append(f"{indent}  sources: {len(srcs)} file(s), e.g. {srcs[0]['path'] if isinstance(srcs[0], dict) else srcs[0]}")
    if info.get("version"):
        lines.append(f"{indent}  volseg version: {info['version']}, created {info.get('created')}, "
                     f"finished {info.get('finished')}")
    return lines


def _state(arr) -> str:
    if not arr.get("made_by_volseg", True):
        return "no completion marker (another tool's store)"
    return "complete" if arr["complete"] else "INCOMPLETE"


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _format_model(info, indent=""):
    lines = [f"{indent}{info['path']}  ({info['kind']}, {_size(info['bytes'])})",
             f"{indent}  threshold {info['threshold']}, input {info['input_dtype']}, "
             f"normalisation {info['normalization']}"]
    warning = (info.get("training") or {}).get("warning")
    if warning:
        lines.append(f"{indent}  warning: {warning}")
    for key in ("architecture", "patch", "margin", "context", "features"):
        if info.get(key) is not None:
            lines.append(f"{indent}  {key}: {info[key]}")
    for key, value in (info.get("training") or {}).items():
        if key == "warning":
            continue
        lines.append(f"{indent}  training {key}: {value}")
    for key, value in (info.get("provenance") or {}).items():
        lines.append(f"{indent}  {key}: {value}")
    if info.get("volseg_version"):
        lines.append(f"{indent}  volseg version: {info['volseg_version']}")
    return lines

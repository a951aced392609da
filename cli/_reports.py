"""Checks shared by the commands that write report files (--json, --csv, --plots)."""

from __future__ import annotations

from pathlib import Path

from volseg.errors import InputError


def check_report_files(args, figures, csv_paths=()) -> None:
    """Refuse to replace files volseg did not write (unless --overwrite), before any work.

    ``args`` carries ``json``, ``csv``, ``plots`` and ``overwrite``; ``figures`` are the
    names a command may write under ``--plots``; ``csv_paths`` further CSV files.
    """
    from volseg.outputs import check_replaceable, csv_by_volseg, json_by_volseg, png_by_volseg

    named = [(f"--{k}", getattr(args, k)) for k in ("json", "csv") if getattr(args, k)]
    named += [("--csv (per slice)", p) for p in csv_paths]
    seen: dict = {}
    for option, path in named:
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{option} {path}: the same file as {seen[key]}; give each report "
                             "its own file")
        seen[key] = option
    if args.json:
        check_replaceable(args.json, marker=json_by_volseg, overwrite=args.overwrite,
                          what="--json report")
    for path in ([args.csv] if args.csv else []) + list(csv_paths):
        check_replaceable(path, marker=csv_by_volseg, overwrite=args.overwrite,
                          what="--csv table")
    if args.plots:
        if Path(args.plots).exists() and not Path(args.plots).is_dir():
            raise InputError(f"--plots {args.plots}: exists and is not a folder")
        for name in figures if Path(args.plots).is_dir() else ():
            check_replaceable(Path(args.plots) / name, marker=png_by_volseg,
                              overwrite=args.overwrite, what="--plots figure")

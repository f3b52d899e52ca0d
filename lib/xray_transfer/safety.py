"""Guards for output paths: never replace or write into what this project did not write.

A dataset folder is ours when its ``dataset.json`` is the record :func:`xray_transfer.data.assemble`
writes; a run folder when its ``run.json`` is the record of
:func:`xray_transfer.train.cross_validate`; a model file when the ``.json`` record of
:func:`xray_transfer.train.fit_final` lies beside it. Anything else that is not empty is
refused with a message naming the path. See the book's "Guarantees" page.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class Refused(ValueError):
    """An output path we will not write to; the message names it and says what to do."""


def _record(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def is_ours(folder, kind: str) -> bool:
    """Whether ``folder`` holds a ``kind`` ("dataset" or "run") this project wrote.

    >>> is_ours("/nonexistent", "run")
    False
    """
    folder = Path(folder)
    if kind == "dataset":
        rec = _record(folder / "dataset.json")
        return {"manifest_sha256", "selection"} <= set(rec) and (folder / "manifest.csv").is_file()
    if kind == "run":
        return "identity" in _record(folder / "run.json")
    raise ValueError(f"kind must be 'dataset' or 'run', got {kind!r}")


def check_output_folder(folder, kind: str) -> None:
    """Refuse ``folder`` unless it is missing, empty, or a ``kind`` folder of ours.

    Raises
    ------
    Refused
        If it is a file, or a non-empty folder without our record.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise Refused(f"{folder}: exists and is not a folder; choose another output path")
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return
    if is_ours(folder, kind):
        foreign = _not_written_by_assemble(folder) if kind == "dataset" else []
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise Refused(f"{folder}: a dataset folder of this project, but {shown} in it were not written by "
                          "`assemble`, which replaces the whole folder; move them out first")
        return
    record = {"dataset": "dataset.json", "run": "run.json"}[kind]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise Refused(f"{folder}: not empty ({shown}) and not a {kind} folder of this project (no {record} of ours), "
                  "so it is left alone; choose a new or empty folder")


def _not_written_by_assemble(folder: Path) -> list[str]:
    """Entries of a dataset folder other than those ``assemble`` wrote (its records and the listed images)."""
    import csv

    from .data import IN_PROGRESS
    with open(folder / "manifest.csv", newline="", encoding="utf-8", errors="replace") as f:
        ours = {f"images/{r.get('file')}" for r in csv.DictReader(f)}
    ours |= {"manifest.csv", "dataset.json", IN_PROGRESS, "images"} | {Path(p).parent.as_posix() for p in ours}
    found = []
    for base, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            rel = (Path(base) / name).relative_to(folder).as_posix()
            if rel not in ours or (Path(base) / name).is_symlink():
                found.append(rel)
        dirs[:] = [d for d in dirs if Path(base, d).relative_to(folder).as_posix() in ours]
    return sorted(found)


def check_apart(output, input_, what="input") -> None:
    """Refuse an ``output`` path equal to ``input_``, inside it, or containing it.

    >>> check_apart("data/dataset", "../shared/cxr")
    >>> check_apart("cxr/out", "cxr")
    Traceback (most recent call last):
    ...
    xray_transfer.safety.Refused: cxr/out: the output is inside the input cxr; write it elsewhere
    """
    out, inp = Path(output).resolve(), Path(input_).resolve()
    if out == inp:
        where = "is the"
    elif inp in out.parents:
        where = "is inside the"
    elif out in inp.parents:
        where = "contains the"
    else:
        return
    raise Refused(f"{output}: the output {where} {what} {input_}; write it elsewhere")


def check_model_path(model_path) -> None:
    """Refuse to overwrite a model file (or its ``.json``) that has no record of ours beside it."""
    path = Path(model_path)
    record = path.with_suffix(".json")
    if path.suffix != ".keras":
        raise Refused(f"{path}: a model file must end in .keras")
    if path.is_dir() or record.is_dir():
        raise Refused(f"{path if path.is_dir() else record}: is a folder; choose another model path")
    ours = "model_sha256" in _record(record)
    if (path.exists() or record.exists()) and not ours:
        raise Refused(f"{path}: {record.name if record.exists() else path.name} exists and was not written by "
                      "`xray-transfer final` (no model record beside it); choose another path")


def check_writable(path) -> None:
    """Check that a file can be written at ``path`` (folder created if needed), before any work."""
    path = Path(path)
    if path.is_dir():
        raise Refused(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise Refused(f"{path}: cannot write here ({err.strerror or err}); choose a writable place") from None

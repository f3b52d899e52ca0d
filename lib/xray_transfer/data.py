"""Assemble the paper's three-class dataset from the public collections as distributed.

Layout expected under ``data_dir`` (the collections' own layouts)::

    cohen/metadata.csv, cohen/images/...        ieee8023/covid-chestxray-dataset
    figure1/metadata.csv, figure1/images/...    agchung/Figure1-COVID-chestxray-dataset
    kermany/NORMAL/*.jpeg                       Kermany et al. 2018, chest_xray/*/NORMAL
    kermany/PNEUMONIA/*_bacteria_*.jpeg         same, bacterial pneumonia only

Images in subfolders and behind symbolic links are found (each file and folder once).

Selection rule (deterministic, by name only): within each class, candidates are
ordered by :func:`draw_key`, the SHA-256 of ``"<collection>/<file name without
extension>"`` (e.g. ``"kermany/person1000_bacteria_2931"``), and the first ``n`` are
kept (224 COVID-19, 700 bacterial pneumonia, 504 normal by default). The key does not
depend on the file's bytes, size or format, so the full-size originals downloaded from
the collections select the same images as a downscaled or re-encoded copy.

A download that holds more images than ours (a later Cohen, all of Kermany's) draws
others by this rule. :func:`assemble` with ``select_from`` takes instead exactly the
images a committed ``manifest.csv`` lists, found by collection and file name.
"""
from __future__ import annotations

import csv
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .preprocess import IMAGE_SUFFIXES, ImageReadError, OUTPUT_SIZE, letterbox, read_image
from .provenance import git_commit, portable_path, versions

#: Class names in label order (label 0 is the positive class of the 2-class metrics).
CLASSES = ("covid", "normal", "pneumonia")
#: The paper's class sizes (Section 2.1).
PAPER_COUNTS = {"covid": 224, "normal": 504, "pneumonia": 700}
#: Environment variable naming the data folder when no path is given.
DATA_ENV = "XRAY_DATA_DIR"
MANIFEST_COLUMNS = ("file", "label", "source", "original_path", "patient_id",
                    "original_width", "original_height", "width", "height",
                    "sha256", "pixels_sha256")
SOURCES = ("cohen", "figure1", "kermany")
#: File an unfinished :func:`assemble` keeps in its temporary folder: its process and backup folder.
IN_PROGRESS = ".assemble-in-progress.json"

FETCH_HELP = """\
Put the three public collections under one folder, laid out as distributed:
  <data>/cohen/metadata.csv and <data>/cohen/images/      git clone https://github.com/ieee8023/covid-chestxray-dataset cohen
  <data>/figure1/metadata.csv and <data>/figure1/images/  git clone https://github.com/agchung/Figure1-COVID-chestxray-dataset figure1
  <data>/kermany/NORMAL/ and <data>/kermany/PNEUMONIA/    from https://data.mendeley.com/datasets/rscbjbr9sj (ChestXRay2017.zip,
                                                          chest_xray/train and test merged per class)
then pass its path as data_dir or set XRAY_DATA_DIR.
To take exactly the images of the book's dataset from these (or larger) downloads, pass
select_from=artifacts/dataset/manifest.csv."""


class DataLayoutError(FileNotFoundError):
    """The data folder does not have the expected layout; the message says what to put where."""


class DuplicateImage(ValueError):
    """Two source files give the same image; the message names both."""


@dataclass(frozen=True)
class Candidate:
    """One source X-ray eligible for a class."""

    label: str
    source: str
    path: Path          # absolute
    original_path: str  # relative to the data folder
    patient_id: str
    listed: dict | None = field(default=None, compare=False)  # its manifest row, when taken with select_from


def resolve_data_dir(data_dir=None, needed=None) -> Path:
    """Return the data folder from ``data_dir`` or ``$XRAY_DATA_DIR``, checking that it holds ``needed``.

    ``needed`` defaults to the collections' layout (module docstring).
    """
    data_dir = data_dir or os.environ.get(DATA_ENV)
    if not data_dir:
        raise DataLayoutError(f"No data folder given (pass data_dir or set {DATA_ENV}).\n{FETCH_HELP}")
    root = Path(data_dir).expanduser().resolve()
    if needed is None:
        needed = ["cohen/metadata.csv", "cohen/images", "figure1/metadata.csv", "figure1/images",
                  "kermany/NORMAL", "kermany/PNEUMONIA"]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DataLayoutError(f"{root}: missing {', '.join(missing)}.\n{FETCH_HELP}")
    return root


def is_covid_finding(finding) -> bool:
    """A metadata finding of COVID-19, in the collections' spellings of 2020 and of today.

    >>> [is_covid_finding(f) for f in ("COVID-19", "COVID-19, ARDS", "Pneumonia/Viral/COVID-19", "Pneumonia/Viral/SARS")]
    [True, True, True, False]
    """
    return any(part.strip().startswith("COVID-19") for part in (finding or "").split("/"))


def is_frontal_xray(row: dict) -> bool:
    """A metadata row of a frontal X-ray: modality X-ray (or unstated) and not a lateral view."""
    view = (row.get("view") or "").strip().upper()
    lateral = view in {"L", "LL", "LATERAL", "LAT"} or "LATERAL" in view
    return (row.get("modality") or "X-ray").strip() == "X-ray" and not lateral


def _metadata_candidates(root: Path, source: str, name_column: str, folder: str) -> list[Candidate]:
    meta = root / source / "metadata.csv"
    try:
        with open(meta, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise DataLayoutError(f"{meta}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                              "save it as UTF-8, as the collection distributes it") from None
    except csv.Error as err:
        raise DataLayoutError(f"{meta}: not a readable CSV file ({err}); restore the collection's own file") from None
    missing = [c for c in ("patientid", "finding", name_column) if c not in columns]
    if missing:
        raise DataLayoutError(f"{meta}: no column {', '.join(map(repr, missing))}; is this the collection's "
                              "metadata.csv? Restore the collection's own file")
    out, line_of = [], {}
    for line, row in rows:
        if None in row.values():
            raise DataLayoutError(f"{meta}: line {line} has fewer fields than the header; repair or remove "
                                  "that row (or restore the collection's own file)")
        if not is_covid_finding(row.get("finding")) or not is_frontal_xray(row):
            continue
        name = PurePosixPath(row.get("folder") or folder, row[name_column])
        if name.is_absolute() or ".." in name.parts or "\\" in str(name) or not row[name_column].strip():
            raise DataLayoutError(f"{meta}: line {line} names {str(name)!r}, a path outside {source}/; "
                                  "a row must name a file inside the collection's folder")
        rel = Path(source) / name
        if rel in line_of:
            raise DataLayoutError(f"{meta}: lines {line_of[rel]} and {line} both list {rel.name}, which would put "
                                  "one image in the dataset twice; remove the duplicate row")
        line_of[rel] = line
        out.append(Candidate("covid", source, root / rel, rel.as_posix(), f"{source}-{row['patientid']}"))
    return out


_KERMANY_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")


def kermany_patient(name: str) -> str:
    """Patient id from a Kermany file name (``person1000_bacteria_2931.jpeg`` -> ``person1000``).

    >>> kermany_patient("NORMAL2-IM-1427-0001.jpeg")
    'NORMAL2-IM-1427'
    """
    m = _KERMANY_PATIENT.match(name)
    if not m:
        raise ValueError(f"{name}: not a Kermany file name (IM-NNNN-..., NORMAL2-IM-NNNN-..., personN_...)")
    return m.group(1)


def walk_folder(folder) -> tuple[list[Path], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Every file under ``folder``, following symbolic links once each; and what is left out, with why.

    Returns ``(files, bad, repeats)``, the last two as (path, why) pairs. ``bad``: broken
    links, link loops, folders that cannot be listed, entries that are neither file nor
    folder. ``repeats``: links to a folder already searched or a file already found
    (used once, under its first name).
    Paths keep their names under ``folder`` (links are not resolved); files are sorted.
    """
    files, left_out, repeats, dirs_seen, files_seen = [], [], [], {}, {}

    def visit(d: Path, st):
        key = (st.st_dev, st.st_ino)
        if key in dirs_seen:
            repeats.append((d, f"a link to {dirs_seen[key]}, already searched"))
            return
        dirs_seen[key] = d
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as err:
            left_out.append((d, f"cannot be listed ({err.strerror})"))
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                st = path.stat()
            except OSError as err:
                why = ("a symbolic link loop" if err.errno == errno.ELOOP
                       else "a broken symbolic link (its target is missing)" if path.is_symlink() else err.strerror)
                left_out.append((path, why))
                continue
            if stat.S_ISDIR(st.st_mode):
                visit(path, st)
            elif not stat.S_ISREG(st.st_mode):
                left_out.append((path, "not a file"))
            elif (st.st_dev, st.st_ino) in files_seen:
                repeats.append((path, f"the same file as {files_seen[st.st_dev, st.st_ino]} (a link)"))
            else:
                files_seen[st.st_dev, st.st_ino] = path
                files.append(path)

    folder = Path(folder)
    visit(folder, folder.stat())
    return sorted(files), left_out, repeats


def _folder_candidates(root: Path, folder: str, label: str, pattern: str, left_out: list,
                       repeats: list) -> list[Candidate]:
    d = root / "kermany" / folder
    files, bad, again = walk_folder(d)
    left_out += [f"{p}: {why}" for p, why in bad]
    repeats += [f"{p}: {why}" for p, why in again]
    out = []
    for p in files:
        if not re.search(pattern, p.name, re.IGNORECASE):
            continue
        try:
            patient = kermany_patient(p.name)
        except ValueError:
            left_out.append(f"{p}: not a Kermany file name (IM-NNNN-..., NORMAL2-IM-NNNN-..., personN_...)")
            continue
        out.append(Candidate(label, "kermany", p, p.relative_to(root).as_posix(), f"kermany-{patient}"))
    if not out:
        raise DataLayoutError(f"{d}: no {label} images found (expected files matching {pattern!r}).\n{FETCH_HELP}")
    return out


def find_candidates(data_dir=None, left_out=None, repeats=None) -> dict[str, list[Candidate]]:
    """All eligible images per class: COVID-19 X-rays (frontal, not CT), bacterial pneumonia, normal.

    File extensions are matched regardless of case (``.jpeg``, ``.JPEG``). Kermany's
    folders are searched with :func:`walk_folder`: the lists ``left_out`` and ``repeats``
    get what it leaves out (with why), ``left_out`` also every file not named as Kermany's.

    Raises
    ------
    DataLayoutError
        If a class has no eligible image, a metadata file is unreadable, lacks a
        column, has a short row, lists an image twice or a path outside its folder,
        or two files would get one name in the dataset (``covid0.png`` and ``covid0.jpg``).
    """
    root = resolve_data_dir(data_dir)
    left_out = [] if left_out is None else left_out
    repeats = [] if repeats is None else repeats
    covid = (_metadata_candidates(root, "cohen", "filename", "images")
             + _metadata_candidates(root, "figure1", "imagename", "images"))
    if not covid:
        raise DataLayoutError(f"{root}: cohen/metadata.csv and figure1/metadata.csv list no frontal COVID-19 "
                              f"X-ray (finding 'COVID-19...', modality X-ray); check these files.\n{FETCH_HELP}")
    cands = {
        "covid": covid,
        "normal": _folder_candidates(root, "NORMAL", "normal", r"\.(jpe?g|png)$", left_out, repeats),
        "pneumonia": _folder_candidates(root, "PNEUMONIA", "pneumonia", r"_bacteria_.*\.(jpe?g|png)$", left_out,
                                        repeats),
    }
    seen = {}
    for label in CLASSES:
        for c in cands[label]:
            name = output_name(c)
            if name in seen:
                raise DataLayoutError(f"{root}: {seen[name].original_path} and {c.original_path} would both "
                                      f"become {name} in the dataset (same name, other extension); remove or "
                                      "rename one of them")
            seen[name] = c
    return cands


def output_name(cand: Candidate) -> str:
    """File name of a candidate in the dataset cache, under ``images/``.

    >>> output_name(Candidate("normal", "kermany", Path("/d/kermany/NORMAL/IM-0001-0001.jpeg"), "", ""))
    'normal/kermany__IM-0001-0001.png'
    """
    return f"{cand.label}/{cand.source}__{cand.path.stem}.png"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def draw_key(source: str, path) -> str:
    """Order of an image in its class's draw: SHA-256 of ``"<source>/<stem>"`` (name only).

    >>> draw_key("kermany", "kermany/NORMAL/IM-0035-0001.jpeg")[:12]
    '83a360470bc7'
    """
    return hashlib.sha256(f"{source}/{Path(path).stem}".encode()).hexdigest()


def select(candidates: dict[str, list[Candidate]], counts=None, on_missing="raise",
           allow_shortfall=False) -> dict[str, list[tuple[Candidate, str]]]:
    """Draw ``counts[label]`` images per class: the first by :func:`draw_key` (file names only).

    A class with fewer eligible images than asked for is an error, unless
    ``allow_shortfall`` is true: then all of its images are taken.

    Returns, per class, (candidate, sha256 of the file bytes) pairs in draw order.
    Missing files raise :class:`ImageReadError` naming the file and the metadata
    row's source.
    """
    counts = dict(PAPER_COUNTS if counts is None else counts)
    chosen = {}
    for label in CLASSES:
        pool = candidates.get(label, [])
        n = counts[label]
        if n > len(pool):
            if not allow_shortfall:
                raise ValueError(_shortfall_message(label, n, len(pool)))
            n = len(pool)
        present = []
        for c in pool:
            if not c.path.is_file():
                if on_missing == "skip":
                    continue
                raise ImageReadError(f"{c.path}: listed in {c.source}/metadata.csv but the file is missing; "
                                     "restore it or remove its row")
            present.append(c)
        present.sort(key=lambda c: (draw_key(c.source, c.path), c.original_path))
        chosen[label] = [(c, sha256_file(c.path)) for c in present[:n]]
    return chosen


def _shortfall_message(label, n, available):
    return (f"counts[{label!r}]={n} but only {available} eligible {label} images were found; "
            f"pass allow_shortfall=True to take all {available}, or add images")


def manifest_hash(manifest_path) -> str:
    """SHA-256 of the manifest file: the dataset's identity, recorded by every run."""
    return sha256_file(manifest_path)


def assemble(data_dir=None, out_dir="data/dataset", size=OUTPUT_SIZE, counts=None,
             on_error="raise", allow_shortfall=False, progress=True, select_from=None) -> dict:
    """Select, letterbox and cache the dataset; write ``manifest.csv`` and ``dataset.json``.

    Parameters
    ----------
    data_dir : path, optional
        Folder with the collections (see module docstring); default ``$XRAY_DATA_DIR``.
    out_dir : path, default "data/dataset"
        Cache folder, replaced atomically: a failed run leaves the previous cache
        (or nothing) behind, never a partial one. It must be new, empty or a
        dataset folder written by this function with nothing added, and apart from
        ``data_dir``. A symbolic link is followed: its target is replaced.
    size : (int, int), default (266, 200)
        Output (width, height).
    counts : dict, optional
        Images per class; default the paper's 224 / 504 / 700.
    on_error : {"raise", "skip"}, default "raise"
        What to do with an unreadable, tiny or oversized image, a file in Kermany's
        folders that is not named as Kermany's, a broken link, or an image whose pixels
        equal an image already taken: stop with an error naming the file(s), or skip it,
        take the next candidate in draw order and list it under ``skipped``.
    allow_shortfall : bool, default False
        Take all images of a class that has fewer than asked for (recorded in
        ``dataset.json`` as ``shortfall``) instead of stopping with an error.
    select_from : path, optional
        A ``manifest.csv`` of this function (such as ``artifacts/dataset/manifest.csv``):
        take exactly its images, in its order, instead of drawing (``counts`` is then
        ignored). See :func:`find_listed`. Each image's pixels are checked against the
        listed hash where its size allows (``pixel_check`` in ``dataset.json``).

    Returns
    -------
    dict
        The contents of ``dataset.json`` (counts, skipped files, manifest hash, timing).

    Raises
    ------
    xray_transfer.safety.Refused
        If ``out_dir`` is not ours to replace, or overlaps ``data_dir``.
    DataLayoutError
        See :func:`find_candidates` and :func:`find_listed`.
    """
    from .safety import check_apart, check_output_folder

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    t0 = time.perf_counter()
    listed = read_selection(select_from) if select_from is not None else None
    root = resolve_data_dir(data_dir, None if listed is None else sorted({r["source"] for r in listed}))
    given = Path(out_dir)
    real = given.resolve()  # follows a link: its target is replaced, the link kept
    check_apart(given, root, "data folder")
    recover_interrupted(real)
    check_output_folder(given, "dataset")
    skipped, repeats = [], []
    if listed is not None:
        ordered, asked, missing, bad, repeats = _listed_candidates(root, listed, select_from)
        if missing and not allow_shortfall:
            raise DataLayoutError(f"{len(missing)} of the {len(listed)} images listed in {select_from} are not under "
                                  f"{root} (searched by collection and file name, any image extension): "
                                  f"{', '.join(missing)}; download them, or pass allow_shortfall=True to go without")
        skipped += [f"{root / m}: listed in {select_from} but not found" for m in missing]
        counts = {k: len(v) for k, v in ordered.items()}
        eligible = dict(counts)
    else:
        counts = dict(PAPER_COUNTS if counts is None else counts)
        if set(counts) != set(CLASSES) or any(int(n) != n or n < 1 for n in counts.values()):
            raise ValueError(f"counts must give a positive whole number for each of {CLASSES}, got {counts!r}")
        bad = []
        cands = find_candidates(root, bad, repeats)
        asked = counts
        counts = {k: min(n, len(cands[k])) if allow_shortfall else n for k, n in asked.items()}
        eligible = {k: len(v) for k, v in cands.items()}
        if on_error == "skip":  # keep the whole pool in draw order; skip bad files as we go
            for label in CLASSES:
                if asked[label] > len(cands[label]) and not allow_shortfall:
                    raise ValueError(_shortfall_message(label, asked[label], len(cands[label])))
            ordered = select(cands, {k: len(v) for k, v in cands.items()}, on_missing="skip")
            skipped += [f"{c.path}: listed in {c.source}/metadata.csv but the file is missing"
                        for label in CLASSES for c in cands[label] if not c.path.is_file()]
        else:
            ordered = select(cands, asked, allow_shortfall=allow_shortfall)
    if bad and on_error == "raise" and listed is None:  # with a selection, a missing image is named instead
        raise DataLayoutError(f"{len(bad)} entries of {root} cannot be used: {'; '.join(bad[:5])}; remove or "
                              "repair them, or pass on_error='skip' to list them and go on")
    skipped += bad + repeats
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=real.name + ".tmp-", dir=real.parent))
    except OSError as err:
        raise OSError(f"{given}: cannot write beside it ({err.strerror}); choose a writable place") from None
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))  # unique: never someone else's folder
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a folder of ours follows the umask
    try:
        (tmp / IN_PROGRESS).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                   "backup": old.name}))
        rows, taken = [], {}  # taken: pixels SHA-256 -> source path
        checks = {"same file": 0, "same pixels": 0, "pixels differ": [], "not checked (other size)": []}
        total = sum(counts.values())
        bar = _progress(total, "letterboxing", progress)
        for label in CLASSES:
            kept = 0
            (tmp / "images" / label).mkdir(parents=True)
            for cand, digest in ordered[label]:
                if kept == counts[label]:
                    break
                try:
                    im = read_image(cand.path)
                except ImageReadError as err:
                    if on_error == "raise":
                        raise
                    skipped.append(str(err))
                    continue
                row = cand.listed
                if row is not None:
                    im = _as_listed(im, row)
                boxed = letterbox(im, size)
                name = output_name(cand)
                pixels = np.asarray(boxed)
                pixels_sha256 = hashlib.sha256(pixels.tobytes()).hexdigest()
                if pixels_sha256 in taken:
                    msg = (f"{cand.path}: same image as {taken[pixels_sha256]} (equal pixels after letterboxing), "
                           "which would be in the dataset twice")
                    if on_error == "raise":
                        raise DuplicateImage(f"{msg}; remove one of the two (or pass on_error='skip')")
                    skipped.append(msg)
                    continue
                if row is not None:
                    _note_check(checks, cand, row, digest, im, pixels_sha256, tuple(size))
                taken[pixels_sha256] = cand.path
                _to_storable(pixels).save(tmp / "images" / name)
                rows.append({"file": name, "label": label, "source": cand.source,
                             "original_path": cand.original_path, "patient_id": cand.patient_id,
                             "original_width": im.size[0], "original_height": im.size[1],
                             "width": boxed.size[0], "height": boxed.size[1], "sha256": digest,
                             "pixels_sha256": pixels_sha256})
                kept += 1
                bar.update(1)
            if kept == 0:
                raise ValueError(f"no readable {label} image: all {len(ordered[label])} candidates were skipped "
                                 f"({skipped[-1] if skipped else ''}); check the data folder")
            if kept < counts[label] and allow_shortfall:
                counts[label] = kept
            elif kept < counts[label]:
                raise ValueError(f"only {kept} readable {label} images, {counts[label]} asked for "
                                 f"({len(skipped)} skipped: {skipped[:3]})")
        bar.close()
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        selection = ("per class, first n by SHA-256 of '<collection>/<file name without extension>' (draw_key)"
                     if listed is None else f"the images listed in {select_from} "
                     f"(SHA-256 {sha256_file(select_from)}), in its order")
        info = {"data_dir": portable_path(root), "size": list(size), "counts": counts, "asked": asked,
                "shortfall": {k: asked[k] - counts[k] for k in asked if counts[k] < asked[k]},
                "eligible": eligible, "selection": selection,
                "skipped": skipped, "manifest_sha256": manifest_hash(tmp / "manifest.csv"),
                "seconds": round(time.perf_counter() - t0, 2),
                "git": git_commit(), "versions": versions()}
        if listed is not None:
            info["pixel_check"] = checks
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        if real.exists():  # the swap: at every moment the old or the new dataset is whole (recover_interrupted)
            real.rename(old)
        tmp.rename(real)
        shutil.rmtree(old, ignore_errors=True)
        (real / IN_PROGRESS).unlink()
        return info
    except BaseException as err:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and str(tmp) in str(err):  # name the user's path, not our temporary one
            raise OSError(f"{given}: cannot write the dataset ({err.strerror or err}); check free space and "
                          "permissions") from None
        raise


def recover_interrupted(out_dir) -> None:
    """Clean up after an :func:`assemble` into ``out_dir`` that was killed (``kill -9``, power loss).

    Its temporary folder is deleted. If it was killed between the two renames of the
    swap, the previous dataset is put back; if after them, the previous dataset's
    backup is deleted. Only folders whose process has ended, on this machine, are touched.
    """
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return
    for tmp in sorted(out_dir.parent.glob(glob.escape(out_dir.name) + ".tmp-*")):
        note = _in_progress(tmp, out_dir)
        if note is None:
            continue
        backup = out_dir.parent / note["backup"]
        if not out_dir.exists() and backup.is_dir():
            backup.rename(out_dir)  # killed between the renames: the old dataset comes back
        shutil.rmtree(tmp, ignore_errors=True)
    note = _in_progress(out_dir, out_dir)
    if note is not None:  # killed after the renames: the backup is left
        shutil.rmtree(out_dir.parent / note["backup"], ignore_errors=True)
        (out_dir / IN_PROGRESS).unlink()


def _in_progress(folder: Path, out_dir: Path) -> dict | None:
    """The note of a killed assemble in ``folder``; None if there is none, or its process still runs."""
    try:
        note = json.loads((folder / IN_PROGRESS).read_text())
        pid, host, backup = int(note["pid"]), note["host"], str(note["backup"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if Path(backup).name != backup or not backup.startswith(out_dir.name + ".old-") or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
        return None  # still running
    except ProcessLookupError:
        return note
    except PermissionError:
        return None


def read_selection(path) -> list[dict]:
    """The rows of a ``manifest.csv`` to take again with :func:`assemble` (``select_from``), checked."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: no such manifest; give a manifest.csv of `assemble`, such as "
                              "artifacts/dataset/manifest.csv")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, r) for r in reader]
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataLayoutError(f"{path}: not a readable manifest ({err}); give a manifest.csv of `assemble`") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing or not rows:
        raise DataLayoutError(f"{path}: {'no column ' + ', '.join(missing) if missing else 'no rows'}; "
                              "give a manifest.csv of `assemble`")
    seen = set()
    for line, r in rows:
        rel = PurePosixPath(r["original_path"] or "")
        ok = (None not in r.values() and r["label"] in CLASSES and r["source"] in SOURCES
              and not rel.is_absolute() and ".." not in rel.parts and rel.parts[:1] == (r["source"],)
              and r["file"] == f"{r['label']}/{r['source']}__{rel.stem}.png" and r["file"] not in seen
              and all(str(r[k]).isdigit() for k in ("original_width", "original_height")))
        if not ok:
            raise DataLayoutError(f"{path}: line {line} is not a manifest row of `assemble` (or repeats a file); "
                                  "give the manifest as `assemble` wrote it")
        seen.add(r["file"])
    return [r for _, r in rows]


def find_listed(root, rows) -> tuple[list[tuple[dict, Path]], list[str], list[str], list[str]]:
    """Find each listed image under ``root``: at its listed path, else by collection and file name.

    The name is matched without its extension (``x.jpg`` is found as ``x.png``), anywhere
    in the collection's folder (Kermany's ``train/`` and ``test/`` need not be merged).
    Returns ``(found, missing, bad, repeats)``: (row, path) pairs in the listed order,
    the listed paths not found, and what :func:`walk_folder` left out.

    Raises
    ------
    DataLayoutError
        If a listed name matches two files (neither at the listed path).
    """
    root = Path(root)
    index, bad, repeats = {}, [], []
    for source in sorted({r["source"] for r in rows}):
        files, b, again = walk_folder(root / source)
        bad += [f"{p}: {why}" for p, why in b]
        repeats += [f"{p}: {why}" for p, why in again]
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault((source, p.stem), []).append(p)
    found, missing = [], []
    for r in rows:
        hits = index.get((r["source"], PurePosixPath(r["original_path"]).stem), [])
        exact = root / r["original_path"]
        if exact in hits or len(hits) == 1:
            found.append((r, exact if exact in hits else hits[0]))
        elif hits:
            raise DataLayoutError(f"{r['original_path']} is listed once but found as {hits[0]} and {hits[1]}; "
                                  "keep one of them")
        else:
            missing.append(r["original_path"])
    return found, missing, bad, repeats


def _listed_candidates(root, listed, select_from):
    found, missing, bad, repeats = find_listed(root, listed)
    ordered = {label: [] for label in CLASSES}
    for row, path in found:
        cand = Candidate(row["label"], row["source"], path, path.relative_to(root).as_posix(), row["patient_id"], row)
        ordered[row["label"]].append((cand, sha256_file(path)))
    asked = {label: sum(r["label"] == label for r in listed) for label in CLASSES}
    if not all(ordered.values()):
        empty = [label for label in CLASSES if not ordered[label]]
        raise DataLayoutError(f"{select_from}: none of its {', '.join(empty)} images is under {root}; download them")
    return ordered, asked, missing, bad, repeats


def _as_listed(im: Image.Image, row: dict) -> Image.Image:
    """``im`` downscaled to the listed size when it is a larger copy of that image (same aspect ratio).

    The book's images are copies downscaled to at most 768 px (Lanczos); a full-size
    original is brought to the same size before letterboxing.
    """
    w, h = im.size
    lw, lh = int(row["original_width"]), int(row["original_height"])
    if w > lw and h > lh and abs(w * lh - h * lw) <= max(w, h):
        return im.resize((lw, lh), Image.Resampling.LANCZOS)
    return im


def _note_check(checks, cand, row, digest, im, pixels_sha256, size):
    """Record how an image found for a manifest row compares with it (``pixel_check``)."""
    if digest == row["sha256"]:
        checks["same file"] += 1
    elif im.size == (int(row["original_width"]), int(row["original_height"])) and size == (
            int(row["width"]), int(row["height"])):
        if pixels_sha256 == row["pixels_sha256"]:
            checks["same pixels"] += 1
        else:
            checks["pixels differ"].append(cand.original_path)
    else:
        checks["not checked (other size)"].append(cand.original_path)


def _progress(total, desc, enabled):
    if enabled:  # tqdm.auto warns in notebooks without ipywidgets, so import it only when asked
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit="img")


def read_manifest(dataset_dir) -> list[dict]:
    """Rows of ``manifest.csv`` as dicts (sizes as ints)."""
    path = Path(dataset_dir) / "manifest.csv"
    if not path.is_file():
        raise DataLayoutError(f"{path}: no manifest; build the dataset first with `make dataset`")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("original_width", "original_height", "width", "height"):
            r[k] = int(r[k])
    return rows


@dataclass
class Dataset:
    """Letterboxed images in memory: ``images`` (N, H, W, 3) uint8, ``labels`` (N,) int."""

    images: np.ndarray
    labels: np.ndarray
    manifest: list
    manifest_sha256: str

    @property
    def groups(self) -> np.ndarray:
        """Patient id per image, for patient-grouped splits."""
        return np.array([r["patient_id"] for r in self.manifest])

    def __len__(self):
        return len(self.labels)


def load_dataset(dataset_dir="data/dataset", limit=None, seed=0) -> Dataset:
    """Load a cached dataset (folder from :func:`assemble` or a ``.npz`` pack from :func:`pack`).

    ``limit`` keeps a stratified random subset of that many images (for smoke runs).
    A folder's ``manifest.csv`` is checked against the hash ``dataset.json`` records, and
    every image against its ``pixels_sha256`` (a pack's images too): a changed label or
    image is an error, never used.
    """
    dataset_dir = Path(dataset_dir)
    if dataset_dir.suffix == ".npz":
        import zipfile
        try:
            with np.load(dataset_dir, allow_pickle=False) as z:
                images, labels = _unpack(z), z["labels"]
                manifest = json.loads(str(z["manifest"]))
                digest = str(z["manifest_sha256"])
        except FileNotFoundError:
            raise DataLayoutError(f"{dataset_dir}: no such pack; make one with `make pack`") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            if isinstance(err, ImageReadError):
                raise
            raise DataLayoutError(f"{dataset_dir}: not a dataset pack of `make pack` ({type(err).__name__}); "
                                  "make it again with `make pack`") from None
    else:
        manifest = read_manifest(dataset_dir)
        digest = manifest_hash(dataset_dir / "manifest.csv")
        try:
            recorded = json.loads((dataset_dir / "dataset.json").read_text())["manifest_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if recorded != digest:
            raise DataLayoutError(f"{dataset_dir / 'manifest.csv'}: does not match the hash in dataset.json "
                                  "(edited, or dataset.json lost); rebuild the dataset with `make dataset`")
        images = np.stack([_read_cached(dataset_dir / "images" / r["file"], r["pixels_sha256"]) for r in manifest])
        labels = np.array([CLASSES.index(r["label"]) for r in manifest])
    if limit is not None and not (isinstance(limit, (int, np.integer)) and not isinstance(limit, bool)
                                  and (3 <= limit <= len(labels) - 3 or limit >= len(labels))):
        raise ValueError(f"limit must be a whole number from 3 to {len(labels) - 3} (a stratified subset keeps each "
                         f"class in and out of it), or at least {len(labels)} for all images; got {limit!r}")
    if limit is not None and limit < len(labels):
        from sklearn.model_selection import train_test_split
        keep, _ = train_test_split(np.arange(len(labels)), train_size=limit, stratify=labels, random_state=seed)
        keep = np.sort(keep)
        images, labels, manifest = images[keep], labels[keep], [manifest[i] for i in keep]
    return Dataset(images, labels.astype(np.int64), manifest, digest)


def _read_cached(path: Path, pixels_sha256: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))
    except (OSError, FileNotFoundError) as err:
        raise ImageReadError(f"{path}: cached image unreadable ({err}); rebuild with `make dataset`") from None
    if hashlib.sha256(a.tobytes()).hexdigest() != pixels_sha256:
        raise ImageReadError(f"{path}: pixels differ from manifest.csv (changed after `assemble`); rebuild the "
                             "dataset with `make dataset`")
    return a


def _to_storable(pixels: np.ndarray) -> Image.Image:
    """One channel when R = G = B (most X-rays), else RGB: lossless either way."""
    grey = (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return Image.fromarray(pixels[..., 0] if grey else pixels)


def pack(dataset_dir="data/dataset", out="data/dataset.npz") -> Path:
    """Write the cached dataset as one ``.npz`` of lossless WebP images (to carry to a GPU machine).

    About 30 MB for the full set, half of a compressed pixel array. :func:`load_dataset`
    reads it back to the same pixels (checked against ``pixels_sha256``).
    """
    import io
    ds = load_dataset(dataset_dir)
    blobs = []
    for pixels in ds.images:
        buf = io.BytesIO()
        _to_storable(pixels).save(buf, "WEBP", lossless=True, quality=100, method=4)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npz")
    try:
        np.savez(tmp, blob=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
                 labels=ds.labels, manifest=json.dumps(ds.manifest), manifest_sha256=ds.manifest_sha256)
        os.replace(tmp, out)
    except OSError as err:  # name the user's file, not our temporary one
        raise OSError(f"{out}: cannot write the pack ({err.strerror or err}); check free space and "
                      "permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _unpack(z) -> np.ndarray:
    import io
    blob, offsets, manifest = z["blob"], z["offsets"], json.loads(str(z["manifest"]))
    images = []
    for i, row in enumerate(manifest):
        with Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())) as im:
            a = np.asarray(im.convert("RGB"))
        if hashlib.sha256(a.tobytes()).hexdigest() != row["pixels_sha256"]:
            raise ImageReadError(f"{row['file']}: pixels in the pack differ from the manifest; re-run `make pack`")
        images.append(a)
    return np.stack(images)


def synthetic_collections(root, n_covid=6, n_normal=6, n_pneumonia=6, seed=0) -> Path:
    """Write a tiny fake data folder with the collections' layout (for tests and smoke runs)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for d in ("cohen/images", "figure1/images", "kermany/NORMAL", "kermany/PNEUMONIA"):
        (root / d).mkdir(parents=True, exist_ok=True)

    def img(path, w, h, level):
        a = rng.integers(0, 60, size=(h, w), dtype=np.uint8) + level
        Image.fromarray(a.astype(np.uint8), "L").save(path)

    cohen_rows = []
    for i in range(n_covid):
        name = f"covid{i}.png"
        img(root / "cohen/images" / name, 90 + 7 * i, 80, 150)
        cohen_rows.append({"patientid": str(i // 2), "finding": "COVID-19", "view": "PA",
                           "modality": "X-ray", "folder": "images", "filename": name})
    cohen_rows.append({"patientid": "99", "finding": "COVID-19", "view": "L", "modality": "X-ray",
                       "folder": "images", "filename": "lateral.png"})
    cohen_rows.append({"patientid": "98", "finding": "SARS", "view": "PA", "modality": "X-ray",
                       "folder": "images", "filename": "sars.png"})
    img(root / "cohen/images/lateral.png", 80, 80, 100)
    img(root / "cohen/images/sars.png", 80, 80, 100)
    _write_csv(root / "cohen/metadata.csv", cohen_rows)
    img(root / "figure1/images/COVID-00001.jpg", 70, 90, 150)
    _write_csv(root / "figure1/metadata.csv",
               [{"patientid": "COVID-00001", "finding": "COVID-19", "view": "", "modality": "X-ray",
                 "imagename": "COVID-00001.jpg"}])
    for i in range(n_normal):
        img(root / f"kermany/NORMAL/IM-{i:04d}-0001.jpeg", 100, 80 - i, 40)
    for i in range(n_pneumonia):
        img(root / f"kermany/PNEUMONIA/person{i}_bacteria_{i + 10}.jpeg", 120, 80, 90)
    img(root / "kermany/PNEUMONIA/person500_virus_1.jpeg", 120, 80, 90)
    return root


def _write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

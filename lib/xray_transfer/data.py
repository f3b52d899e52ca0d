"""Assemble the paper's three-class dataset from the public collections as distributed.

Layout expected under ``data_dir`` (the collections' own layouts)::

    cohen/metadata.csv, cohen/images/...        ieee8023/covid-chestxray-dataset
    figure1/metadata.csv, figure1/images/...    agchung/Figure1-COVID-chestxray-dataset
    kermany/NORMAL/*.jpeg                       Kermany et al. 2018, chest_xray/*/NORMAL
    kermany/PNEUMONIA/*_bacteria_*.jpeg         same, bacterial pneumonia only

Selection rule (deterministic, by name only): within each class, candidates are
ordered by :func:`draw_key`, the SHA-256 of ``"<collection>/<file name without
extension>"`` (e.g. ``"kermany/person1000_bacteria_2931"``), and the first ``n`` are
kept (224 COVID-19, 700 bacterial pneumonia, 504 normal by default). The key does not
depend on the file's bytes, size or format, so the full-size originals downloaded from
the collections select the same images as a downscaled or re-encoded copy.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .preprocess import ImageReadError, OUTPUT_SIZE, letterbox, read_image
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

FETCH_HELP = """\
Put the three public collections under one folder, laid out as distributed:
  <data>/cohen/metadata.csv and <data>/cohen/images/      git clone https://github.com/ieee8023/covid-chestxray-dataset cohen
  <data>/figure1/metadata.csv and <data>/figure1/images/  git clone https://github.com/agchung/Figure1-COVID-chestxray-dataset figure1
  <data>/kermany/NORMAL/ and <data>/kermany/PNEUMONIA/    from https://data.mendeley.com/datasets/rscbjbr9sj (ChestXRay2017.zip,
                                                          chest_xray/train and test merged per class)
then pass its path as data_dir or set XRAY_DATA_DIR."""


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


def resolve_data_dir(data_dir=None) -> Path:
    """Return the data folder from ``data_dir`` or ``$XRAY_DATA_DIR``, checking its layout."""
    data_dir = data_dir or os.environ.get(DATA_ENV)
    if not data_dir:
        raise DataLayoutError(f"No data folder given (pass data_dir or set {DATA_ENV}).\n{FETCH_HELP}")
    root = Path(data_dir).expanduser().resolve()
    needed = ["cohen/metadata.csv", "cohen/images", "figure1/metadata.csv", "figure1/images",
              "kermany/NORMAL", "kermany/PNEUMONIA"]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DataLayoutError(f"{root}: missing {', '.join(missing)}.\n{FETCH_HELP}")
    return root


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
        finding = (row.get("finding") or "").strip()
        if not finding.startswith("COVID-19"):
            continue
        if not is_frontal_xray(row):
            continue
        rel = Path(source) / (row.get("folder") or folder) / row[name_column]
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


def _folder_candidates(root: Path, folder: str, label: str, pattern: str) -> list[Candidate]:
    d = root / "kermany" / folder
    files = sorted(p for p in d.iterdir() if p.is_file() and re.search(pattern, p.name, re.IGNORECASE))
    if not files:
        raise DataLayoutError(f"{d}: no {label} images found (expected files matching {pattern!r}).\n{FETCH_HELP}")
    return [Candidate(label, "kermany", p, p.relative_to(root).as_posix(), f"kermany-{kermany_patient(p.name)}")
            for p in files]


def find_candidates(data_dir=None) -> dict[str, list[Candidate]]:
    """All eligible images per class: COVID-19 X-rays (frontal, not CT), bacterial pneumonia, normal.

    File extensions are matched regardless of case (``.jpeg``, ``.JPEG``).

    Raises
    ------
    DataLayoutError
        If a class has no eligible image, a metadata file is unreadable, lacks a
        column or lists an image twice, or two files would get one name in the
        dataset (``covid0.png`` and ``covid0.jpg``).
    """
    root = resolve_data_dir(data_dir)
    covid = (_metadata_candidates(root, "cohen", "filename", "images")
             + _metadata_candidates(root, "figure1", "imagename", "images"))
    if not covid:
        raise DataLayoutError(f"{root}: cohen/metadata.csv and figure1/metadata.csv list no frontal COVID-19 "
                              f"X-ray (finding 'COVID-19...', modality X-ray); check these files.\n{FETCH_HELP}")
    cands = {
        "covid": covid,
        "normal": _folder_candidates(root, "NORMAL", "normal", r"\.(jpe?g|png)$"),
        "pneumonia": _folder_candidates(root, "PNEUMONIA", "pneumonia", r"_bacteria_.*\.(jpe?g|png)$"),
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
             on_error="raise", allow_shortfall=False, progress=True) -> dict:
    """Select, letterbox and cache the dataset; write ``manifest.csv`` and ``dataset.json``.

    Parameters
    ----------
    data_dir : path, optional
        Folder with the collections (see module docstring); default ``$XRAY_DATA_DIR``.
    out_dir : path, default "data/dataset"
        Cache folder, replaced atomically: a failed run leaves the previous cache
        (or nothing) behind, never a partial one. It must be new, empty or a
        dataset folder written by this function, and apart from ``data_dir``.
    size : (int, int), default (266, 200)
        Output (width, height).
    counts : dict, optional
        Images per class; default the paper's 224 / 504 / 700.
    on_error : {"raise", "skip"}, default "raise"
        What to do with an unreadable or oversized image, or one whose pixels equal
        an image already taken: stop with an error naming the file(s), or skip it,
        take the next candidate in draw order and list it under ``skipped``.
    allow_shortfall : bool, default False
        Take all images of a class that has fewer than asked for (recorded in
        ``dataset.json`` as ``shortfall``) instead of stopping with an error.

    Returns
    -------
    dict
        The contents of ``dataset.json`` (counts, skipped files, manifest hash, timing).

    Raises
    ------
    xray_transfer.safety.Refused
        If ``out_dir`` is not ours to replace, or overlaps ``data_dir``.
    DataLayoutError
        See :func:`find_candidates`.
    """
    from .safety import check_apart, check_output_folder

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    t0 = time.perf_counter()
    root = resolve_data_dir(data_dir)
    out_dir = Path(out_dir)
    check_apart(out_dir, root, "data folder")
    check_output_folder(out_dir, "dataset")
    counts = dict(PAPER_COUNTS if counts is None else counts)
    if set(counts) != set(CLASSES) or any(int(n) != n or n < 1 for n in counts.values()):
        raise ValueError(f"counts must give a positive whole number for each of {CLASSES}, got {counts!r}")
    cands = find_candidates(root)
    asked = counts
    counts = {k: min(n, len(cands[k])) if allow_shortfall else n for k, n in asked.items()}
    skipped = []
    if on_error == "skip":  # keep the whole pool in draw order; skip bad files as we go
        for label in CLASSES:
            if asked[label] > len(cands[label]) and not allow_shortfall:
                raise ValueError(_shortfall_message(label, asked[label], len(cands[label])))
        ordered = select(cands, {k: len(v) for k, v in cands.items()}, on_missing="skip")
        skipped += [f"{c.path}: listed in {c.source}/metadata.csv but the file is missing"
                    for label in CLASSES for c in cands[label] if not c.path.is_file()]
    else:
        ordered = select(cands, asked, allow_shortfall=allow_shortfall)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        rows, taken = [], {}  # taken: pixels SHA-256 -> source path
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
                boxed = letterbox(im, size)
                name = output_name(cand)
                pixels = np.asarray(boxed)
                pixels_sha256 = hashlib.sha256(pixels.tobytes()).hexdigest()
                if pixels_sha256 in taken:
                    msg = (f"{cand.path}: same image as {taken[pixels_sha256]} (equal pixels after letterboxing), "
                           "which would be in the dataset twice")
                    if on_error == "raise":
                        raise DuplicateImage(f"{msg}; remove one of the two (or pass --skip-bad / on_error='skip')")
                    skipped.append(msg)
                    continue
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
        info = {"data_dir": portable_path(root), "size": list(size), "counts": counts, "asked": asked,
                "shortfall": {k: asked[k] - counts[k] for k in asked if counts[k] < asked[k]},
                "eligible": {k: len(v) for k, v in cands.items()},
                "selection": "per class, first n by SHA-256 of '<collection>/<file name without extension>' (draw_key)",
                "skipped": skipped, "manifest_sha256": manifest_hash(tmp / "manifest.csv"),
                "seconds": round(time.perf_counter() - t0, 2),
                "git": git_commit(), "versions": versions()}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))  # unique: never someone else's folder
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        images = np.stack([_read_cached(dataset_dir / "images" / r["file"]) for r in manifest])
        labels = np.array([CLASSES.index(r["label"]) for r in manifest])
    if limit is not None and limit < len(labels):
        from sklearn.model_selection import train_test_split
        keep, _ = train_test_split(np.arange(len(labels)), train_size=limit, stratify=labels, random_state=seed)
        keep = np.sort(keep)
        images, labels, manifest = images[keep], labels[keep], [manifest[i] for i in keep]
    return Dataset(images, labels.astype(np.int64), manifest, digest)


def _read_cached(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, FileNotFoundError) as err:
        raise ImageReadError(f"{path}: cached image unreadable ({err}); rebuild with `make dataset`") from None


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
    np.savez(tmp, blob=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
             labels=ds.labels, manifest=json.dumps(ds.manifest), manifest_sha256=ds.manifest_sha256)
    os.replace(tmp, out)
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

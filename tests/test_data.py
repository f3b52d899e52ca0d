"""Tests for xray_transfer.data: candidate rules, deterministic selection, manifest, cache safety."""
import json
import random

import numpy as np
import pytest
from PIL import Image

from xray_transfer.data import (CLASSES, DATA_ENV, DataLayoutError, assemble, draw_key, find_candidates,
                                kermany_patient, load_dataset, pack, read_manifest, resolve_data_dir,
                                select, sha256_file, synthetic_collections)
from xray_transfer.preprocess import ImageReadError

SMALL = {"covid": 4, "normal": 3, "pneumonia": 5}


def build(cxr_dir, out_dir, **kw):
    kw.setdefault("counts", SMALL)
    return assemble(cxr_dir, out_dir, progress=False, **kw)


def leftovers(folder):
    """Temporary or backup folders an interrupted assemble could leave next to the cache."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old" in p.name)


# ---- which images are eligible ----

def test_candidates_exclude_lateral_views_other_findings_and_viral_pneumonia(cxr_dir):
    cands = find_candidates(cxr_dir)
    covid = {c.original_path for c in cands["covid"]}
    assert len(covid) == 7  # 6 Cohen frontal + 1 Figure 1
    assert "cohen/images/lateral.png" not in covid and "cohen/images/sars.png" not in covid
    assert "figure1/images/COVID-00001.jpg" in covid
    assert len(cands["normal"]) == 6 and len(cands["pneumonia"]) == 6
    assert not any("virus" in c.original_path for c in cands["pneumonia"])
    assert {c.label for lab in CLASSES for c in cands[lab]} == set(CLASSES)


def test_patient_ids_are_parsed_per_source(cxr_dir):
    cands = find_candidates(cxr_dir)
    ids = {c.original_path: c.patient_id for lab in CLASSES for c in cands[lab]}
    assert ids["cohen/images/covid0.png"] == ids["cohen/images/covid1.png"] == "cohen-0"
    assert ids["cohen/images/covid2.png"] == "cohen-1"
    assert ids["figure1/images/COVID-00001.jpg"] == "figure1-COVID-00001"
    assert ids["kermany/NORMAL/IM-0003-0001.jpeg"] == "kermany-IM-0003"
    assert ids["kermany/PNEUMONIA/person2_bacteria_12.jpeg"] == "kermany-person2"


@pytest.mark.parametrize("name, patient", [("person1000_bacteria_2931.jpeg", "person1000"),
                                           ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
                                           ("IM-0115-0001.jpeg", "IM-0115")])
def test_kermany_patient_from_file_name(name, patient):
    assert kermany_patient(name) == patient


def test_kermany_patient_rejects_foreign_name():
    with pytest.raises(ValueError, match="scan_17.jpeg"):
        kermany_patient("scan_17.jpeg")


# ---- selection ----

def test_selection_takes_first_n_by_name_key_whatever_the_listing_order(cxr_dir):
    cands = find_candidates(cxr_dir)
    chosen = select(cands, SMALL)
    for label in CLASSES:
        keys = sorted(draw_key(c.source, c.path) for c in cands[label])
        assert [draw_key(c.source, c.path) for c, _ in chosen[label]] == keys[:SMALL[label]]
        assert [h for _, h in chosen[label]] == [sha256_file(c.path) for c, _ in chosen[label]]
    shuffled = {k: random.Random(1).sample(v, len(v)) for k, v in cands.items()}
    assert select(shuffled, SMALL) == chosen


def test_originals_at_another_size_and_format_select_the_same_names(cxr_dir, tmp_path):
    """A reader's full-size originals (other bytes, size and format) draw the same images."""
    import shutil
    other = tmp_path / "originals"
    shutil.copytree(cxr_dir, other)
    for path in list(other.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as im:
                big = im.resize((im.width * 3, im.height * 3))
            big.save(path, quality=70) if path.suffix.lower() != ".png" else big.save(path)
    a, b = select(find_candidates(cxr_dir), SMALL), select(find_candidates(other), SMALL)
    for label in CLASSES:
        assert [c.original_path for c, _ in a[label]] == [c.original_path for c, _ in b[label]]
        assert [h for _, h in a[label]] != [h for _, h in b[label]]  # the bytes did change


def test_assemble_writes_asked_counts_and_266x200_images(cxr_dir, tmp_path):
    info = build(cxr_dir, tmp_path / "ds")
    rows = read_manifest(tmp_path / "ds")
    assert info["counts"] == SMALL and info["shortfall"] == {} and info["skipped"] == []
    assert info["eligible"] == {"covid": 7, "normal": 6, "pneumonia": 6}
    assert {lab: sum(r["label"] == lab for r in rows) for lab in CLASSES} == SMALL
    for r in rows:
        with Image.open(tmp_path / "ds" / "images" / r["file"]) as im:
            assert im.size == (266, 200) == (r["width"], r["height"])
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text()) == info
    assert info["git"]["commit"] and "pillow" in info["versions"]  # provenance of the cache
    assert leftovers(tmp_path) == []


def test_shortfall_raises_unless_allowed(cxr_dir, tmp_path):
    counts = {"covid": 4, "normal": 10, "pneumonia": 5}
    with pytest.raises(ValueError, match=r"counts\['normal'\]=10 but only 6 .*allow_shortfall"):
        build(cxr_dir, tmp_path / "ds", counts=counts)
    assert not (tmp_path / "ds").exists() and leftovers(tmp_path) == []
    info = build(cxr_dir, tmp_path / "ds", counts=counts, allow_shortfall=True)
    assert info["counts"]["normal"] == 6 and info["shortfall"] == {"normal": 4}
    assert info["asked"]["normal"] == 10


def test_counts_must_name_every_class(cxr_dir, tmp_path):
    with pytest.raises(ValueError, match="counts must give"):
        build(cxr_dir, tmp_path / "ds", counts={"covid": 2, "normal": 2})


# ---- manifest identity ----

def test_assembling_twice_gives_the_same_manifest_hash(cxr_dir, tmp_path):
    a = build(cxr_dir, tmp_path / "a")
    b = build(cxr_dir, tmp_path / "b")
    assert a["manifest_sha256"] == b["manifest_sha256"]
    assert (tmp_path / "a/manifest.csv").read_bytes() == (tmp_path / "b/manifest.csv").read_bytes()


def test_changing_one_source_image_changes_the_manifest_hash(cxr_dir, tmp_path):
    a = build(cxr_dir, tmp_path / "a")
    chosen = read_manifest(tmp_path / "a")[0]["original_path"]
    path = cxr_dir / chosen
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L")).copy()
    arr[0, 0] ^= 0xFF
    Image.fromarray(arr, "L").save(path)
    b = build(cxr_dir, tmp_path / "b")
    assert a["manifest_sha256"] != b["manifest_sha256"]


# ---- bad input: clear errors, skip mode, no partial cache ----

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKERS = {
    "truncated_jpeg": (_truncate, "damaged"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "empty"),
    "not_an_image": (lambda p: p.write_text("<html>404 Not Found</html>"), "not a readable image"),
}


def _first_drawn_normal(cxr_dir):
    return select(find_candidates(cxr_dir), SMALL)["normal"][0][0].path


def _break_a_normal(cxr_dir, breaker):
    """Break one normal image that still sorts before the last one; return it and counts that draw it.

    Breaking a file changes its SHA-256 and so its place in the draw; asking for
    ``rank + 1`` normals makes sure the broken file is tried and a spare remains.
    """
    n = len(find_candidates(cxr_dir)["normal"])
    for cand in find_candidates(cxr_dir)["normal"]:
        original = cand.path.read_bytes()
        breaker(cand.path)
        order = [c.path for c, _ in select(find_candidates(cxr_dir), {"covid": 1, "normal": n, "pneumonia": 1})["normal"]]
        rank = order.index(cand.path)
        if rank < n - 1:
            return cand.path, {**SMALL, "normal": rank + 1}
        cand.path.write_bytes(original)
    raise AssertionError("no normal image sorts early enough once broken")


@pytest.fixture
def cxr_dir_many_normals(tmp_path):
    """12 normals, so that even an empty file (whose hash sorts high) is not last in the draw."""
    return synthetic_collections(tmp_path / "cxr", n_normal=12)


@pytest.mark.parametrize("kind", BREAKERS)
def test_unreadable_image_raises_naming_file_and_keeps_previous_cache(cxr_dir_many_normals, tmp_path, kind):
    cxr_dir = cxr_dir_many_normals
    out = tmp_path / "ds"
    before = build(cxr_dir, out)
    breaker, message = BREAKERS[kind]
    victim, counts = _break_a_normal(cxr_dir, breaker)
    with pytest.raises(ImageReadError, match=f"{victim.name}.*{message}"):
        build(cxr_dir, out, counts=counts)
    assert read_manifest(out) and json.loads((out / "dataset.json").read_text()) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", BREAKERS)
def test_unreadable_image_is_skipped_and_counted_in_skip_mode(cxr_dir_many_normals, tmp_path, kind):
    cxr_dir = cxr_dir_many_normals
    victim, counts = _break_a_normal(cxr_dir, BREAKERS[kind][0])
    info = build(cxr_dir, tmp_path / "ds", counts=counts, on_error="skip")
    assert info["counts"] == counts
    assert len(info["skipped"]) == 1 and victim.name in info["skipped"][0]
    assert victim.name not in {r["original_path"].split("/")[-1] for r in read_manifest(tmp_path / "ds")}


def test_failed_first_build_leaves_no_cache_folder(cxr_dir, tmp_path):
    _truncate(_first_drawn_normal(cxr_dir))
    with pytest.raises(ImageReadError):
        build(cxr_dir, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and leftovers(tmp_path) == []


def test_metadata_row_with_missing_file_raises_naming_file(cxr_dir, tmp_path):
    (cxr_dir / "cohen/images/covid3.png").unlink()
    with pytest.raises(ImageReadError, match=r"covid3\.png: listed in cohen/metadata.csv"):
        build(cxr_dir, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    info = build(cxr_dir, tmp_path / "ds", on_error="skip")
    assert len(info["skipped"]) == 1 and "covid3.png" in info["skipped"][0]
    assert info["counts"] == SMALL


def test_empty_class_folder_raises_data_layout_error_naming_folder(cxr_dir, tmp_path):
    for p in (cxr_dir / "kermany/NORMAL").iterdir():
        p.unlink()
    with pytest.raises(DataLayoutError, match=r"kermany/NORMAL: no normal images"):
        build(cxr_dir, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_missing_collection_folder_raises_data_layout_error(cxr_dir):
    (cxr_dir / "figure1/metadata.csv").unlink()
    with pytest.raises(DataLayoutError, match="missing figure1/metadata.csv"):
        resolve_data_dir(cxr_dir)


def test_data_dir_falls_back_to_environment_variable(cxr_dir, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(cxr_dir))
    assert resolve_data_dir(None) == cxr_dir.resolve()
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(DataLayoutError, match=DATA_ENV):
        resolve_data_dir(None)


def test_on_error_must_be_raise_or_skip(cxr_dir, tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        build(cxr_dir, tmp_path / "ds", on_error="ignore")


# ---- cache round trips ----

def test_pack_and_load_round_trip_gives_identical_pixels_and_manifest_hash(cxr_dir, tmp_path):
    info = build(cxr_dir, tmp_path / "ds")
    folder = load_dataset(tmp_path / "ds")
    packed = load_dataset(pack(tmp_path / "ds", tmp_path / "ds.npz"))
    assert folder.images.shape == (sum(SMALL.values()), 200, 266, 3) and folder.images.dtype == np.uint8
    np.testing.assert_array_equal(packed.images, folder.images)
    np.testing.assert_array_equal(packed.labels, folder.labels)
    assert packed.manifest_sha256 == folder.manifest_sha256 == info["manifest_sha256"]
    assert list(packed.groups) == list(folder.groups)


def test_cached_pixels_match_manifest_pixel_hashes(cxr_dir, tmp_path):
    import hashlib
    build(cxr_dir, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert [hashlib.sha256(a.tobytes()).hexdigest() for a in ds.images] == \
           [r["pixels_sha256"] for r in ds.manifest]


def test_load_dataset_limit_keeps_a_stratified_subset(cxr_dir, tmp_path):
    build(cxr_dir, tmp_path / "ds", counts={"covid": 6, "normal": 6, "pneumonia": 6})
    ds = load_dataset(tmp_path / "ds", limit=9, seed=0)
    assert len(ds) == 9 and np.bincount(ds.labels).tolist() == [3, 3, 3]


def test_load_dataset_without_manifest_says_how_to_build(tmp_path):
    with pytest.raises(DataLayoutError, match="make dataset"):
        load_dataset(tmp_path / "nothing")


# ---- hostile input (issue 13): refused with a message naming the file, or skipped and listed ----

def _rewrite_metadata(path, change):
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = change(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def test_output_equal_to_inside_or_around_the_data_folder_is_refused(cxr_dir, tmp_path):
    from xray_transfer.safety import Refused
    before = sorted(p.relative_to(cxr_dir) for p in cxr_dir.rglob("*"))
    for out, where in [(cxr_dir, "is the data folder"), (cxr_dir / "kermany" / "ds", "is inside the data folder"),
                       (tmp_path, "contains the data folder")]:
        with pytest.raises(Refused, match=where):
            build(cxr_dir, out)
    assert sorted(p.relative_to(cxr_dir) for p in cxr_dir.rglob("*")) == before


def test_a_folder_we_did_not_write_is_never_replaced(cxr_dir, tmp_path):
    from xray_transfer.safety import Refused
    theirs = tmp_path / "models"
    theirs.mkdir()
    (theirs / "best.keras").write_bytes(b"someone's model")
    (theirs / "dataset.json").write_text('{"name": "a dataset.json of another tool"}')
    with pytest.raises(Refused, match=r"models: not empty \(best.keras, dataset.json\).*choose a new or empty folder"):
        build(cxr_dir, theirs)
    assert (theirs / "best.keras").read_bytes() == b"someone's model"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(Refused, match="not a folder"):
        build(cxr_dir, tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    assert build(cxr_dir, tmp_path / "empty")["counts"] == SMALL  # empty: fine
    assert build(cxr_dir, tmp_path / "empty")["counts"] == SMALL  # ours: replaced


def test_rebuilding_leaves_a_neighbour_named_like_the_backup_alone(cxr_dir, tmp_path):
    build(cxr_dir, tmp_path / "ds")
    (tmp_path / "ds.old").mkdir()
    (tmp_path / "ds.old" / "keep.txt").write_text("mine")
    build(cxr_dir, tmp_path / "ds")
    assert (tmp_path / "ds.old" / "keep.txt").read_text() == "mine"


def test_a_class_with_no_image_is_refused_even_with_allow_shortfall(cxr_dir, tmp_path):
    for source in ("cohen", "figure1"):
        _rewrite_metadata(cxr_dir / source / "metadata.csv",
                          lambda rows: [{**r, "finding": "SARS"} for r in rows])
    with pytest.raises(DataLayoutError, match="list no frontal COVID-19"):
        build(cxr_dir, tmp_path / "ds", allow_shortfall=True)
    assert not (tmp_path / "ds").exists()


def test_a_class_whose_images_are_all_unreadable_is_refused_in_skip_mode(cxr_dir, tmp_path):
    for p in (cxr_dir / "kermany/NORMAL").iterdir():
        p.write_bytes(b"")
    with pytest.raises(ValueError, match="no readable normal image"):
        build(cxr_dir, tmp_path / "ds", on_error="skip", allow_shortfall=True)


def test_duplicated_metadata_row_is_refused_naming_file_and_lines(cxr_dir, tmp_path):
    _rewrite_metadata(cxr_dir / "cohen/metadata.csv", lambda rows: rows + [rows[2]])
    with pytest.raises(DataLayoutError, match=r"cohen/metadata.csv: lines 4 and 10 both list covid2.png"):
        build(cxr_dir, tmp_path / "ds")


def test_duplicate_image_by_pixels_is_refused_or_skipped_and_listed(cxr_dir, tmp_path):
    import shutil
    src = cxr_dir / "kermany/NORMAL/IM-0002-0001.jpeg"
    shutil.copy(src, cxr_dir / "kermany/NORMAL/IM-0100-0001.jpeg")
    counts = {**SMALL, "normal": 7}  # every normal, so both copies are drawn
    with pytest.raises(ValueError, match=r"IM-0[01]0[02]-0001.jpeg: same image as .*IM-0[01]0[02]-0001.jpeg"):
        build(cxr_dir, tmp_path / "ds", counts=counts)
    info = build(cxr_dir, tmp_path / "ds", counts=counts, on_error="skip", allow_shortfall=True)
    assert len(info["skipped"]) == 1 and "same image as" in info["skipped"][0]
    assert info["counts"]["normal"] == 6 and info["shortfall"] == {"normal": 1}
    pixels = [r["pixels_sha256"] for r in read_manifest(tmp_path / "ds")]
    assert len(set(pixels)) == len(pixels)


def test_two_sources_with_one_stem_are_refused(cxr_dir, tmp_path):
    Image.new("L", (90, 80), 30).save(cxr_dir / "cohen/images/covid0.jpg")
    _rewrite_metadata(cxr_dir / "cohen/metadata.csv",
                      lambda rows: rows + [{**rows[0], "patientid": "7", "filename": "covid0.jpg"}])
    with pytest.raises(DataLayoutError, match=r"cohen/images/covid0.png and cohen/images/covid0.jpg would both "
                                              r"become covid/cohen__covid0.png"):
        build(cxr_dir, tmp_path / "ds")


def test_kermany_extensions_match_regardless_of_case(cxr_dir):
    (cxr_dir / "kermany/NORMAL/IM-0000-0001.jpeg").rename(cxr_dir / "kermany/NORMAL/IM-0000-0001.JPEG")
    (cxr_dir / "kermany/PNEUMONIA/person0_bacteria_10.jpeg").rename(
        cxr_dir / "kermany/PNEUMONIA/person0_bacteria_10.JPEG")
    cands = find_candidates(cxr_dir)
    assert len(cands["normal"]) == 6 and len(cands["pneumonia"]) == 6
    assert "kermany/NORMAL/IM-0000-0001.JPEG" in {c.original_path for c in cands["normal"]}


def test_metadata_in_another_encoding_is_refused_naming_the_file(cxr_dir, tmp_path):
    meta = cxr_dir / "cohen/metadata.csv"
    meta.write_bytes(meta.read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(DataLayoutError, match=r"cohen/metadata.csv: not UTF-8 text .*save it as UTF-8"):
        build(cxr_dir, tmp_path / "ds")


def test_metadata_without_patientid_is_refused_naming_file_and_column(cxr_dir, tmp_path):
    _rewrite_metadata(cxr_dir / "figure1/metadata.csv",
                      lambda rows: [{k: v for k, v in r.items() if k != "patientid"} for r in rows])
    with pytest.raises(DataLayoutError, match=r"figure1/metadata.csv: no column 'patientid'"):
        build(cxr_dir, tmp_path / "ds")


def test_oversized_image_is_refused_by_name_or_skipped_and_listed(cxr_dir, tmp_path, monkeypatch):
    victim = _first_drawn_normal(cxr_dir)
    Image.new("L", (500, 400), 60).save(victim)  # 200 000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow refuses above twice this
    with pytest.raises(ImageReadError, match=f"{victim.name}: image too large"):
        build(cxr_dir, tmp_path / "ds")
    info = build(cxr_dir, tmp_path / "ds", on_error="skip")
    assert info["counts"] == SMALL and len(info["skipped"]) == 1
    assert victim.name in info["skipped"][0] and "too large" in info["skipped"][0]


def test_a_damaged_pack_is_refused_naming_it(tmp_path):
    bad = tmp_path / "dataset.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataLayoutError, match=r"dataset.npz: not a dataset pack .*make pack"):
        load_dataset(bad)


# ---- hostile input, round 2 (issue 28): never change what we did not write ----

def test_rebuilding_refuses_a_dataset_folder_with_files_we_did_not_write(cxr_dir, tmp_path):
    from xray_transfer.safety import Refused
    build(cxr_dir, tmp_path / "ds")
    (tmp_path / "ds" / "MY_NOTES.txt").write_text("mine")
    (tmp_path / "ds" / "extra").mkdir()
    (tmp_path / "ds" / "extra" / "x.png").write_bytes(b"mine too")
    with pytest.raises(Refused, match=r"ds: a dataset folder of this project, but MY_NOTES.txt, extra "
                                      r"in it were not written by `assemble`"):
        build(cxr_dir, tmp_path / "ds")
    assert (tmp_path / "ds" / "MY_NOTES.txt").read_text() == "mine"
    assert (tmp_path / "ds" / "extra" / "x.png").read_bytes() == b"mine too"


def test_output_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(cxr_dir, tmp_path):
    (tmp_path / "real").mkdir()
    build(cxr_dir, tmp_path / "real" / "ds")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real" / "ds")
    info = build(cxr_dir, link, counts={**SMALL, "normal": 2})
    assert link.is_symlink() and read_manifest(link) == read_manifest(tmp_path / "real" / "ds")
    assert json.loads((link / "dataset.json").read_text()) == info and info["counts"]["normal"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr", "link", "real"]
    assert leftovers(tmp_path / "real") == []


KILLER = """
import os, signal, sys
from pathlib import Path
from xray_transfer import data
where = sys.argv[3]
if where == "letterbox":
    real = data.letterbox
    calls = []
    def letterbox(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    data.letterbox = letterbox
else:  # between the two renames of the swap
    rename = Path.rename
    def killing_rename(self, target):
        out = rename(self, target)
        if ".old-" in str(target):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    Path.rename = killing_rename
data.assemble(sys.argv[1], sys.argv[2], counts={"covid": 4, "normal": 3, "pneumonia": 5}, progress=False)
"""


@pytest.mark.parametrize("where", ["letterbox", "swap"])
def test_a_killed_assemble_is_cleaned_up_and_the_old_dataset_recovered_by_the_next_run(cxr_dir, tmp_path, where):
    import subprocess
    import sys
    out = tmp_path / "ds"
    before = build(cxr_dir, out)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(cxr_dir), str(out), where])
    assert proc.returncode == -9 and leftovers(tmp_path)  # killed, leaving its folders
    assert out.exists() == (where == "letterbox")
    with pytest.raises(ValueError, match="counts"):  # a next run that fails still recovers the old dataset
        build(cxr_dir, out, counts={"covid": 1})
    assert leftovers(tmp_path) == [] and json.loads((out / "dataset.json").read_text()) == before
    assert load_dataset(out).manifest_sha256 == before["manifest_sha256"]


def test_the_dataset_folder_follows_the_umask(cxr_dir, tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        build(cxr_dir, tmp_path / "ds")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ds").stat().st_mode) == 0o755


# ---- hostile input, round 2: nothing silently wrong ----

@pytest.mark.parametrize("name", ["/etc/hosts.png", "../../outside.png", "sub/../../../outside.png"])
def test_a_metadata_path_outside_the_collection_is_refused_naming_the_line(cxr_dir, tmp_path, name):
    Image.new("L", (90, 80), 30).save(tmp_path / "outside.png")
    _rewrite_metadata(cxr_dir / "cohen/metadata.csv", lambda rows: [{**rows[0], "filename": name}] + rows[1:])
    with pytest.raises(DataLayoutError, match=r"cohen/metadata.csv: line 2 names .*outside cohen/"):
        build(cxr_dir, tmp_path / "ds")


@pytest.mark.parametrize("side", [1, 3])
def test_a_tiny_image_is_unreadable_refused_or_skipped_and_listed(cxr_dir, tmp_path, side):
    victim = _first_drawn_normal(cxr_dir)
    Image.new("L", (side, side), 90).save(victim)
    with pytest.raises(ImageReadError, match=f"{victim.name}: only {side}x{side} pixels, too small"):
        build(cxr_dir, tmp_path / "ds")
    info = build(cxr_dir, tmp_path / "ds", on_error="skip")
    assert info["counts"] == SMALL and len(info["skipped"]) == 1 and "too small" in info["skipped"][0]


def test_kermany_folders_follow_links_once_and_list_what_they_leave_out(cxr_dir, tmp_path):
    normal = cxr_dir / "kermany/NORMAL"
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    Image.new("L", (100, 90), 70).save(elsewhere / "IM-0900-0001.jpeg")
    (normal / "linked").symlink_to(elsewhere)             # images in a linked folder are found
    (normal / "loop").symlink_to(normal)                  # a loop is searched once
    (normal / "IM-0901-0001.jpeg").symlink_to(tmp_path / "gone.jpeg")  # broken
    left_out, repeats = [], []
    cands = find_candidates(cxr_dir, left_out, repeats)
    assert "kermany/NORMAL/linked/IM-0900-0001.jpeg" in {c.original_path for c in cands["normal"]}
    assert len(cands["normal"]) == 7
    assert left_out == [f"{normal / 'IM-0901-0001.jpeg'}: a broken symbolic link (its target is missing)"]
    assert repeats == [f"{normal / 'loop'}: a link to {normal}, already searched"]
    with pytest.raises(DataLayoutError, match="IM-0901-0001.jpeg: a broken symbolic link"):
        build(cxr_dir, tmp_path / "ds")
    info = build(cxr_dir, tmp_path / "ds", on_error="skip")
    assert info["eligible"]["normal"] == 7 and info["skipped"] == left_out + repeats


def test_a_stray_file_in_a_kermany_folder_is_named_and_skipped_with_skip_bad(cxr_dir, tmp_path):
    Image.new("L", (100, 90), 70).save(cxr_dir / "kermany/NORMAL/myxray.jpeg")
    with pytest.raises(DataLayoutError, match=r"kermany/NORMAL/myxray.jpeg: not a Kermany file name"):
        build(cxr_dir, tmp_path / "ds")
    info = build(cxr_dir, tmp_path / "ds", on_error="skip")
    assert info["counts"] == SMALL and "myxray.jpeg: not a Kermany file name" in info["skipped"][0]


def test_a_short_metadata_row_is_refused_naming_file_and_line(cxr_dir, tmp_path):
    meta = cxr_dir / "cohen/metadata.csv"
    meta.write_text(meta.read_text() + "77,COVID-19\n")
    with pytest.raises(DataLayoutError, match=r"cohen/metadata.csv: line 10 has fewer fields than the header"):
        build(cxr_dir, tmp_path / "ds")


def test_a_changed_image_or_label_in_a_dataset_folder_is_refused_when_loading_or_packing(cxr_dir, tmp_path):
    import shutil
    build(cxr_dir, tmp_path / "ds")
    shutil.copytree(tmp_path / "ds", tmp_path / "relabelled")
    manifest = tmp_path / "relabelled/manifest.csv"
    manifest.write_text(manifest.read_text().replace(",covid,cohen,", ",normal,cohen,", 1))
    with pytest.raises(DataLayoutError, match=r"relabelled/manifest.csv: does not match the hash in dataset.json"):
        load_dataset(tmp_path / "relabelled")
    first = read_manifest(tmp_path / "ds")[0]["file"]
    Image.new("L", (266, 200), 0).save(tmp_path / "ds/images" / first)
    for act in (lambda: load_dataset(tmp_path / "ds"), lambda: pack(tmp_path / "ds", tmp_path / "ds.npz")):
        with pytest.raises(ImageReadError, match=f"{first}: pixels differ from manifest.csv.*make dataset"):
            act()
    assert not (tmp_path / "ds.npz").exists()


@pytest.mark.parametrize("limit", [0, -5, 2, 10, 1.5])
def test_a_limit_outside_its_range_names_the_range(cxr_dir, tmp_path, limit):
    build(cxr_dir, tmp_path / "ds")  # 12 images: a subset of 3 to 9, or all
    with pytest.raises(ValueError, match=rf"limit must be a whole number from 3 to 9 .* got {limit}"):
        load_dataset(tmp_path / "ds", limit=limit)


def test_errors_name_the_users_paths_not_our_temporary_ones(cxr_dir, tmp_path, monkeypatch):
    import errno
    build(cxr_dir, tmp_path / "ds")

    def full(fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError, match=r"ds.npz: cannot write the pack \(No space left on device\)") as err:
        pack(tmp_path / "ds", tmp_path / "ds.npz")
    assert ".tmp" not in str(err.value)
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: full(fp))
    with pytest.raises(OSError, match=r"new: cannot write the dataset \(No space left on device\)") as err:
        build(cxr_dir, tmp_path / "new")
    assert ".tmp-" not in str(err.value) and leftovers(tmp_path) == []


# ---- the committed manifest as the selection (issue 24) ----

def test_current_cohen_finding_labels_are_accepted(cxr_dir, tmp_path):
    before = {c.original_path for c in find_candidates(cxr_dir)["covid"]}
    _rewrite_metadata(cxr_dir / "cohen/metadata.csv",
                      lambda rows: [{**r, "finding": "Pneumonia/Viral/" + r["finding"]} for r in rows])
    assert {c.original_path for c in find_candidates(cxr_dir)["covid"]} == before  # SARS stays out
    assert build(cxr_dir, tmp_path / "ds")["counts"] == SMALL


def _superset(cxr_dir, tmp_path, chosen):
    """A larger, re-encoded download: more images and rows, chosen files re-encoded or moved."""
    import shutil
    sup = tmp_path / "superset"
    shutil.copytree(cxr_dir, sup)
    for i in range(20):  # extra normals and pneumonias, which change the name-hash draw
        Image.new("L", (100, 90), 10 + i).save(sup / f"kermany/NORMAL/IM-{700 + i:04d}-0001.jpeg")
        Image.new("L", (120, 90), 10 + i).save(sup / f"kermany/PNEUMONIA/person{700 + i}_bacteria_1.jpeg")
    _rewrite_metadata(sup / "cohen/metadata.csv", lambda rows: rows + [
        {**rows[0], "patientid": f"p{i}", "finding": "Pneumonia/Viral/COVID-19", "filename": f"new{i}.png"}
        for i in range(10)])
    for i in range(10):
        Image.new("L", (90, 80), 100 + i).save(sup / f"cohen/images/new{i}.png")
    by_label = {lab: [r for r in chosen if r["label"] == lab] for lab in CLASSES}
    lossless = sup / by_label["covid"][0]["original_path"]  # PNG saved again: other bytes, same pixels
    with Image.open(lossless) as im:
        im.load()
    im.save(lossless, compress_level=1, pnginfo=__import__("PIL.PngImagePlugin").PngImagePlugin.PngInfo())
    moved = sup / by_label["normal"][0]["original_path"]  # in Mendeley's layout, as .png
    (sup / "kermany/NORMAL/test").mkdir()
    with Image.open(moved) as im:
        im.save(sup / "kermany/NORMAL/test" / (moved.stem + ".png"))
    moved.unlink()
    lossy = sup / by_label["pneumonia"][0]["original_path"]  # JPEG re-encoded: other pixels
    with Image.open(lossy) as im:
        im.load()
    im.save(lossy, quality=40)
    return sup, {"lossless": lossless, "moved": moved, "lossy": lossy}


def test_select_from_takes_exactly_the_listed_images_from_a_superset_download(cxr_dir, tmp_path):
    build(cxr_dir, tmp_path / "ds")
    chosen = read_manifest(tmp_path / "ds")
    sup, changed = _superset(cxr_dir, tmp_path, chosen)
    drawn = build(sup, tmp_path / "drawn")
    assert [r["file"] for r in read_manifest(tmp_path / "drawn")] != [r["file"] for r in chosen]  # the draw moves
    info = assemble(sup, tmp_path / "again", select_from=tmp_path / "ds/manifest.csv", progress=False)
    again = read_manifest(tmp_path / "again")
    keys = ("file", "label", "source", "patient_id", "width", "height")
    assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in chosen]
    assert info["counts"] == drawn["asked"] == SMALL and info["skipped"] == []
    check = info["pixel_check"]
    lossy = changed["lossy"].relative_to(sup).as_posix()
    assert check["same file"] == len(chosen) - 3 and check["same pixels"] == 2
    assert check["pixels differ"] == [lossy] and check["not checked (other size)"] == []
    differ = {r["file"] for a, r in zip(chosen, again) if a["pixels_sha256"] != r["pixels_sha256"]}
    assert differ == {r["file"] for r in again if r["original_path"] == lossy}
    assert "kermany/NORMAL/test/" in again[[r["label"] for r in again].index("normal")]["original_path"]


def test_select_from_names_every_listed_image_it_cannot_find(cxr_dir, tmp_path):
    build(cxr_dir, tmp_path / "ds")
    gone = [r["original_path"] for r in read_manifest(tmp_path / "ds")][:2]
    for rel in gone:
        (cxr_dir / rel).unlink()
    with pytest.raises(DataLayoutError, match=rf"2 of the 12 images listed in .*manifest.csv are not under .*"
                                              rf"{gone[0]}, {gone[1]}; download them"):
        assemble(cxr_dir, tmp_path / "again", select_from=tmp_path / "ds/manifest.csv", progress=False)
    info = assemble(cxr_dir, tmp_path / "again", select_from=tmp_path / "ds/manifest.csv", progress=False,
                    allow_shortfall=True)
    assert sum(info["shortfall"].values()) == 2 and len(info["skipped"]) == 2


def test_select_from_a_full_size_original_checks_pixels_after_the_listed_downscale(cxr_dir, tmp_path):
    build(cxr_dir, tmp_path / "ds")
    row = read_manifest(tmp_path / "ds")[0]
    path = cxr_dir / row["original_path"]
    with Image.open(path) as im:
        im.resize((im.width * 2, im.height * 2), Image.Resampling.NEAREST).save(path)
    info = assemble(cxr_dir, tmp_path / "again", select_from=tmp_path / "ds/manifest.csv", progress=False)
    again = read_manifest(tmp_path / "again")[0]
    assert (again["original_width"], again["original_height"]) == (row["original_width"], row["original_height"])
    assert info["pixel_check"]["same file"] == 11

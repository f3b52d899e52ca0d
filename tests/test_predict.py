"""Folder prediction with a model trained on all images, and the audit helpers."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from xray_transfer import audit, predict, saliency, train
from xray_transfer.data import CLASSES, Dataset
from xray_transfer.preprocess import ImageReadError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 4)
    images = rng.integers(0, 255, size=(12, 40, 53, 3), dtype=np.uint8)
    images[labels == 0] //= 4  # a learnable difference
    manifest = [{"file": f"img{i}.png", "patient_id": f"p{i}"} for i in range(12)]
    ds = Dataset(images, labels, manifest, "synthetic")
    path = tmp_path_factory.mktemp("models") / "vgg19.keras"
    record = train.fit_final(ds, path, progress=False, backbone="vgg19", epochs=1, batch_size=4,
                             image_size=(40, 53))
    return path, record


def test_fit_final_records_model_hash_and_provenance(tiny_model):
    path, record = tiny_model
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["model_sha256"] == record["model_sha256"] and len(saved["model_sha256"]) == 64
    assert saved["params"]["backbone"] == "vgg19" and saved["weights"]["kind"] == "none"
    assert saved["environment"]["git"]["commit"]
    assert len(saved["history"]["loss"]) == 1


def _folder(tmp_path):
    d = tmp_path / "xrays"
    (d / "sub").mkdir(parents=True)
    Image.new("L", (120, 90), 40).save(d / "a.png")
    Image.new("RGB", (60, 100), (200, 10, 10)).save(d / "sub" / "b.jpg")
    Image.new("I;16", (80, 80)).save(d / "c16.png")
    (d / "empty.jpeg").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image")
    good = d / "trunc_src.jpg"
    Image.new("L", (200, 200), 128).save(good, quality=95)
    (d / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    good.unlink()
    (d / "readme.txt").write_text("not an image suffix")
    (d / "scan.dcm").write_bytes(b"DICM")
    (d / "sub" / "noext").write_bytes((d / "a.png").read_bytes())
    return d


def test_predict_folder_writes_probabilities_and_lists_skipped_files(tiny_model, tmp_path):
    path, _ = tiny_model
    d = _folder(tmp_path)
    out = tmp_path / "pred.csv"
    res = predict.predict_folder(path, d, out)
    assert res == {"images": 9, "predicted": 3, "skipped": 6, "calls": res["calls"], "warnings": []}
    rows = list(csv.DictReader(open(out)))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    ok = [r for r in rows if not r["error"]]
    assert {r["file"] for r in ok} == {"a.png", "sub/b.jpg", "c16.png"}
    for r in ok:
        p = [float(r[f"p_{c}"]) for c in CLASSES]
        assert abs(sum(p) - 1) < 1e-4 and r["predicted"] == CLASSES[int(np.argmax(p))]
    bad = {r["file"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"empty.jpeg", "notes.jpg", "truncated.jpg", "readme.txt", "scan.dcm", "sub/noext"}
    assert "empty" in bad["empty.jpeg"] and "not a readable image" in bad["notes.jpg"]
    assert "damaged" in bad["truncated.jpg"]
    assert "DICOM is not read" in bad["scan.dcm"] and "no file extension" in bad["sub/noext"]
    assert "not an image type" in bad["readme.txt"]


def test_predict_folder_strict_stops_at_bad_file_and_writes_nothing(tiny_model, tmp_path):
    path, _ = tiny_model
    out = tmp_path / "pred.csv"
    with pytest.raises(ValueError, match="empty.jpeg"):
        predict.predict_folder(path, _folder(tmp_path), out, on_error="raise")
    assert not out.exists() and not list(tmp_path.glob(".pred.csv.tmp*"))


def test_load_trained_refuses_a_changed_model_file(tiny_model, tmp_path):
    path, _ = tiny_model
    copy = tmp_path / "m.keras"
    copy.write_bytes(path.read_bytes() + b"x")
    copy.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="differs from its record"):
        predict.load_trained(copy)


def test_predict_folder_errors_on_missing_or_empty_folder(tiny_model, tmp_path):
    path, _ = tiny_model
    with pytest.raises(FileNotFoundError, match="not a folder"):
        predict.predict_folder(path, tmp_path / "nope", tmp_path / "o.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        predict.predict_folder(path, tmp_path / "empty", tmp_path / "o.csv")


class _NaNModel:
    def predict(self, x, **kw):
        return np.full((len(x), 3), np.nan)


def test_a_nan_prediction_is_an_error_never_a_class(tiny_model, tmp_path, monkeypatch):
    path, record = tiny_model
    monkeypatch.setattr(predict, "load_trained", lambda p: (_NaNModel(), record))
    out = tmp_path / "pred.csv"
    with pytest.raises(predict.PredictionError, match=r"NaN or infinite probabilities for 3 image\(s\) \(a.png"):
        predict.predict_folder(path, _folder(tmp_path), out)
    assert not out.exists()


def test_output_is_checked_before_any_work(tiny_model, tmp_path, monkeypatch):
    from xray_transfer.safety import Refused

    def must_not_load(_):
        raise AssertionError("the model was loaded before the output was checked")

    path, _ = tiny_model
    d = _folder(tmp_path)
    monkeypatch.setattr(predict, "load_trained", must_not_load)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.csv").write_text("my,own\nnotes,here\n")
    for out, message in [(tmp_path / "a_file" / "pred.csv", "cannot write here"),
                         (tmp_path / "sub", "is a folder"),
                         (d / "pred.csv", "inside the folder of images"),
                         (tmp_path / "notes.csv", "not a prediction CSV")]:
        with pytest.raises(Refused, match=message):
            predict.predict_folder(path, d, out)
    assert (tmp_path / "notes.csv").read_text() == "my,own\nnotes,here\n"


def test_unloadable_model_or_record_names_the_file(tiny_model, tmp_path):
    from xray_transfer.data import sha256_file
    from xray_transfer.provenance import record_sha256
    _, record = tiny_model
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"PK not really a zip")
    forged = {**record, "model_sha256": sha256_file(garbage)}
    forged["record_sha256"] = record_sha256(forged)
    garbage.with_suffix(".json").write_text(json.dumps(forged))
    with pytest.raises(predict.ModelLoadError, match=r"garbage.keras: Keras cannot load this model"):
        predict.load_trained(garbage)
    garbage.with_suffix(".json").write_text("{")
    with pytest.raises(predict.ModelLoadError, match=r"garbage.json: not a model record"):
        predict.load_trained(garbage)


# ---- hostile input, round 2 (issue 28) ----

def test_predict_follows_links_once_and_lists_every_entry_it_does_not_use(tiny_model, tmp_path):
    path, _ = tiny_model
    d, elsewhere = tmp_path / "xrays", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    Image.new("L", (120, 90), 40).save(d / "a.png")
    Image.new("L", (120, 90), 90).save(elsewhere / "b.png")
    (d / "linked").symlink_to(elsewhere)          # a linked folder: its image is predicted
    (d / "loop").symlink_to(d)                    # a loop: searched once, listed
    (d / "gone.png").symlink_to(tmp_path / "no.png")  # broken: listed
    res = predict.predict_folder(path, d, tmp_path / "pred.csv")
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    assert res["images"] == 4 and res["predicted"] == 2 and res["skipped"] == 2
    assert rows["linked/b.png"]["predicted"] and rows["a.png"]["predicted"]
    assert "broken symbolic link" in rows["gone.png"]["error"] and "already searched" in rows["loop"]["error"]
    with pytest.raises(ImageReadError, match="gone.png: a broken symbolic link"):
        predict.predict_folder(path, d, tmp_path / "strict.csv", on_error="raise")


@pytest.mark.parametrize("size", [(1, 1), (3, 3)])
def test_predict_lists_a_tiny_image_as_unreadable(tiny_model, tmp_path, size):
    path, _ = tiny_model
    d = tmp_path / "xrays"
    d.mkdir()
    Image.new("L", (120, 90), 40).save(d / "a.png")
    Image.new("L", size, 40).save(d / "dot.png")
    predict.predict_folder(path, d, tmp_path / "pred.csv")
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    assert "too small for an X-ray" in rows["dot.png"]["error"] and not rows["dot.png"]["predicted"]


def test_an_edited_model_record_is_refused(tiny_model, tmp_path):
    import shutil
    path, record = tiny_model
    model = tmp_path / "vgg19.keras"
    shutil.copy(path, model)
    edited = {**record, "params": {**record["params"], "backbone": "mobilenet"}}
    model.with_suffix(".json").write_text(json.dumps(edited))
    with pytest.raises(predict.ModelLoadError, match=r"vgg19.json: edited after `xray-transfer final` wrote it"):
        predict.load_trained(model)
    del edited["record_sha256"]  # without the record's own hash, the model itself tells
    model.with_suffix(".json").write_text(json.dumps(edited))
    with pytest.raises(predict.ModelLoadError, match=r"vgg19.json: names backbone mobilenet .* the model is vgg19"):
        predict.load_trained(model)


def test_a_file_that_is_not_a_keras_model_is_named_as_such(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(predict.ModelLoadError, match=r"notes.txt: not a Keras model \(.keras file\)"):
        predict.load_trained(notes)


def test_a_model_whose_outputs_do_not_vary_is_warned_about(tiny_model, tmp_path, monkeypatch):
    import keras
    path, record = tiny_model
    collapsed = keras.models.load_model(path, compile=False)
    last = collapsed.layers[-1]
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])  # softmax of zeros: 1/3 each, always
    monkeypatch.setattr(predict, "load_trained", lambda _: (collapsed, record))
    d = _folder(tmp_path)
    res = predict.predict_folder(path, d, tmp_path / "pred.csv")
    assert len(res["warnings"]) == 1
    assert "gives the same probabilities (0.333, 0.333, 0.333) for all 3 images" in res["warnings"][0]


def test_patient_overlap_flags_only_patients_split_across_folds():
    fold = [0, 1, 0, 0, 1]
    pid = ["a", "a", "b", "b", "c"]
    assert audit.patient_overlap(fold, pid).tolist() == [True, True, False, False, False]


def test_adult_non_covid_keeps_frontal_non_covid_images_only(cxr_dir):
    meta = cxr_dir / "cohen/metadata.csv"
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    for name, finding, view in [("nf1.png", "No Finding", "PA"), ("nf2.png", "No finding", "AP"),
                                ("side.png", "SARS", "L"), ("gone.png", "Pneumonia", "PA")]:
        rows.append({**rows[0], "patientid": name, "finding": finding, "view": view, "filename": name})
        if name != "gone.png":  # listed but missing on disk: left out, not an error
            Image.new("L", (60, 50), 90).save(cxr_dir / "cohen/images" / name)
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    adults = audit.adult_non_covid(cxr_dir)
    assert [(a["path"].name, a["finding"]) for a in adults] == [
        ("sars.png", "SARS"), ("nf1.png", "No finding"), ("nf2.png", "No finding")]
    assert all(a["source"] == "cohen" and a["patient_id"].startswith("cohen-") for a in adults)


def test_occlusion_map_finds_the_region_a_model_uses():
    # A "model" whose class-0 probability is the mean brightness of the top-left 16x16 square.
    def predict_fn(batch):
        p = batch[:, :16, :16].mean(axis=(1, 2, 3)) / 255.0
        return np.stack([p, 1 - p], axis=1)

    img = np.full((48, 64, 3), 255, dtype=np.uint8)
    m = saliency.occlusion_map(predict_fn, img, target=0, patch=16, stride=16)
    assert m[:16, :16].min() > 0.9 and np.abs(m[32:, 32:]).max() == 0
    inside = np.zeros((48, 64), bool)
    inside[:16, :16] = True
    assert saliency.share_inside(m, inside) == pytest.approx(1.0)


def test_hide_lungs_keeps_only_the_border():
    img = np.full((1, 20, 40, 3), 255, dtype=np.uint8)
    out = train.hide_lungs(img, keep=0.25)
    assert out[0, 5:15, 10:30].max() == 0 and out[0, :5].min() == 255 and out[0, :, :10].min() == 255
    assert saliency.central_mask((20, 40), keep=0.25).sum() == 10 * 20


def test_calls_with_batch_statistics_bypass_stale_moving_averages():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((2,))
    h = keras.layers.BatchNormalization(name="bn")(inp)
    h = keras.layers.Dropout(0.9, name="drop")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
    model.get_layer("out").set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.zeros(2)])
    x = np.stack([np.r_[np.full(20, 100.0), np.full(20, 120.0)], np.zeros(40)], axis=1).astype("float32")
    truth = (x[:, 0] < 110).astype(int)  # above the batch mean -> class 0, below -> class 1
    # moving averages from a different world: mean 0, variance 1 -> every image looks "high"
    assert (np.asarray(model.predict(x, verbose=0)).argmax(1) == 0).all()
    calls = audit.calls_with_batch_statistics(model, x, batch_size=40)
    assert (calls == truth).all()
    assert model.get_layer("drop").rate == 0.9  # restored

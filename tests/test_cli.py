"""The command line under hostile input: a message naming the file, exit status 1, nothing lost."""
import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from xray_transfer import cli
from xray_transfer.data import assemble, synthetic_collections

REPO = Path(__file__).resolve().parents[1]
SMALL = {"covid": 4, "normal": 3, "pneumonia": 5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assemble(synthetic_collections(root / "cxr"), root / "ds", counts=SMALL, progress=False)
    return root / "ds"


def run(capsys, *argv):
    """Run the command line in-process; return (status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(status, err, *phrases):
    """Exit status 1, one or two lines on stderr, no traceback, each phrase present."""
    assert status == 1
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err
    for phrase in phrases:
        assert phrase in err, err


def tree(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes() if p.is_file() else None)
                  for p in Path(folder).rglob("*"))


# ---- never delete what the project did not write ----

def test_assemble_into_the_data_folder_is_refused_and_the_data_kept(cxr_dir, capsys):
    before = tree(cxr_dir)
    status, _, err = run(capsys, "assemble", "--data", cxr_dir, "--out", cxr_dir)
    assert_refused(status, err, str(cxr_dir), "is the data folder", "write it elsewhere")
    status, _, err = run(capsys, "assemble", "--data", cxr_dir, "--out", cxr_dir / "kermany")
    assert_refused(status, err, "is inside the data folder")
    assert tree(cxr_dir) == before


def test_assemble_into_a_folder_of_other_files_is_refused_and_the_files_kept(cxr_dir, tmp_path, capsys):
    models = tmp_path / "trained"
    models.mkdir()
    (models / "vgg19.keras").write_bytes(b"weeks of GPU time")
    status, _, err = run(capsys, "assemble", "--data", cxr_dir, "--out", models)
    assert_refused(status, err, f"{models}: not empty (vgg19.keras)", "choose a new or empty folder")
    assert (models / "vgg19.keras").read_bytes() == b"weeks of GPU time"


def test_train_refuses_a_foreign_folder_and_the_dataset_itself(dataset, tmp_path, capsys):
    theirs = tmp_path / "notes"
    theirs.mkdir()
    (theirs / "todo.txt").write_text("mine")
    args = ["train", "--dataset", dataset, "--backbone", "mobilenet", "--weights", "none"]
    status, _, err = run(capsys, *args, "--out", theirs)
    assert_refused(status, err, "not a run folder of this project (no run.json of ours)")
    status, _, err = run(capsys, *args, "--out", dataset)
    assert_refused(status, err, "is the dataset")
    assert (theirs / "todo.txt").read_text() == "mine" and not (dataset / "run.json").exists()


def test_final_refuses_to_overwrite_a_model_it_did_not_write(dataset, tmp_path, capsys):
    model = tmp_path / "vgg19.keras"
    model.write_bytes(b"someone else's model")
    status, _, err = run(capsys, "final", "--dataset", dataset, "--backbone", "vgg19", "--weights", "none",
                         "--out", model)
    assert_refused(status, err, str(model), "not written by `xray-transfer final`")
    assert model.read_bytes() == b"someone else's model"


def test_final_takes_the_training_flags_of_train_and_records_them(dataset, tmp_path, capsys):
    model = tmp_path / "mobilenet.keras"
    status, out, err = run(capsys, "final", "--dataset", dataset, "--backbone", "mobilenet", "--weights", "none",
                           "--out", model, "--epochs", "1", "--batch-size", "4", "--image-size", "40", "53",
                           "--scaling", "unit", "--resize", "stretch", "--augment", "light", "--seed", "3")
    assert status == 0, err
    params = json.loads(model.with_suffix(".json").read_text())["params"]
    assert {k: params[k] for k in ("scaling", "resize", "augment", "seed", "batch_size", "image_size")} == {
        "scaling": "unit", "resize": "stretch", "augment": "light", "seed": 3, "batch_size": 4, "image_size": [40, 53]}


@pytest.mark.parametrize("flag", ["--scaling", "--resize", "--augment", "--batchnorm"])
@pytest.mark.parametrize("cmd", ["final", "train"])
def test_a_bad_choice_names_its_flag_in_one_line(dataset, tmp_path, capsys, cmd, flag):
    status, _, err = run(capsys, cmd, "--dataset", dataset, "--backbone", "mobilenet", "--weights", "none",
                         "--out", tmp_path / ("out.keras" if cmd == "final" else "run"), flag, "bogus")
    assert_refused(status, err, f"{flag} must be one of (", "got 'bogus'")
    assert not list(tmp_path.iterdir())


def test_pack_refuses_to_overwrite_a_file_it_did_not_write(dataset, tmp_path, capsys):
    other = tmp_path / "other.npz"
    other.write_bytes(b"not ours")
    status, _, err = run(capsys, "pack", "--dataset", dataset, "--out", other)
    assert_refused(status, err, "not a pack of this command")
    assert other.read_bytes() == b"not ours"


# ---- messages, not tracebacks ----

@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1e-4"])
def test_train_refuses_a_learning_rate_that_is_not_finite_and_positive(dataset, tmp_path, capsys, value):
    status, _, err = run(capsys, "train", "--dataset", dataset, "--out", tmp_path / "run", "--backbone",
                         "mobilenet", "--weights", "none", f"--learning-rate={value}")
    assert_refused(status, err, "--learning-rate must be a finite number in (0, 1]")
    assert not (tmp_path / "run").exists()


def test_a_missing_data_folder_gives_a_message_and_debug_gives_the_traceback(tmp_path, capsys, monkeypatch):
    from xray_transfer.data import DataLayoutError
    argv = ["assemble", "--data", tmp_path / "nowhere", "--out", tmp_path / "ds"]
    status, _, err = run(capsys, *argv)
    assert status == 1 and "Traceback" not in err and "nowhere: missing cohen/metadata.csv" in err
    with pytest.raises(DataLayoutError):
        cli.main(["--debug", *map(str, argv)])
    with pytest.raises(DataLayoutError):
        cli.main([*map(str, argv), "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(DataLayoutError):
        cli.main(list(map(str, argv)))


def test_a_damaged_pack_gives_a_message_naming_it(tmp_path, capsys):
    bad = tmp_path / "dataset.npz"
    bad.write_bytes(b"garbage")
    status, _, err = run(capsys, "train", "--dataset", bad, "--out", tmp_path / "run", "--backbone", "mobilenet")
    assert_refused(status, err, f"{bad}: not a dataset pack")


def test_weights_of_another_architecture_or_garbage_name_the_file(dataset, tmp_path, capsys):
    import keras
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"\x89HDF garbage" * 100)
    mobilenet = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(mobilenet)
    for backbone, weights in [("mobilenet", garbage), ("vgg19", mobilenet)]:
        status, _, err = run(capsys, "train", "--dataset", dataset, "--out", tmp_path / f"run-{backbone}",
                             "--backbone", backbone, "--weights", weights, "--image-size", "32", "32",
                             "--n-splits", "2", "--epochs", "1")
        assert_refused(status, err, f"{weights}: not weights of the", "that Keras can load")


def test_predict_checks_its_output_first_and_names_it(tmp_path, capsys):
    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    status, _, err = run(capsys, "predict", "--model", tmp_path / "no.keras", "--input", folder,
                         "--out", blocked / "pred.csv")
    assert_refused(status, err, f"{blocked / 'pred.csv'}: cannot write here")


# ---- hostile input, round 2 (issue 28) ----

def test_benchmark_refuses_to_overwrite_a_benchmark_json_it_did_not_write(dataset, tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "benchmark.json").write_text('{"my": "own timings"}')
    status, _, err = run(capsys, "benchmark", "--dataset", dataset, "--out", bench, "--backbones", "mobilenet",
                         "--epochs", "1", "--n-splits", "3", "--image-size", "32", "32")
    assert_refused(status, err, f"{bench / 'benchmark.json'}: exists and is not a record of `xray-transfer "
                                "benchmark`, so it is left alone")
    assert (bench / "benchmark.json").read_text() == '{"my": "own timings"}'


def test_execute_refuses_to_overwrite_a_file_that_is_not_a_notebook_or_its_input(tmp_path, capsys):
    nb = _notebook(tmp_path / "chapter.ipynb")
    before = nb.read_bytes()
    precious = tmp_path / "precious.txt"
    precious.write_text("years of notes")
    status, _, err = run(capsys, "execute", nb, precious)
    assert_refused(status, err, f"{precious}: the executed notebook must end in .ipynb")
    (tmp_path / "precious.ipynb").write_text("years of notes")
    status, _, err = run(capsys, "execute", nb, tmp_path / "precious.ipynb")
    assert_refused(status, err, "precious.ipynb: exists and is not a notebook, so it is left alone")
    status, _, err = run(capsys, "execute", nb, nb)
    assert_refused(status, err, "chapter.ipynb: is the notebook to execute")
    assert nb.read_bytes() == before and precious.read_text() == "years of notes"
    assert (tmp_path / "precious.ipynb").read_text() == "years of notes"


def test_messages_name_the_flags_of_the_command(cxr_dir, dataset, tmp_path, capsys, monkeypatch):
    status, _, err = run(capsys, "assemble", "--data", cxr_dir, "--out", tmp_path / "ds")  # 7 COVID-19, not 224
    assert_refused(status, err, "pass --allow-shortfall to take all 7")
    monkeypatch.delenv("XRAY_DATA_DIR", raising=False)
    status, _, err = run(capsys, "assemble", "--out", tmp_path / "ds")
    assert status == 1 and "No data folder given (pass --data or set XRAY_DATA_DIR)" in err
    assert "data_dir" not in err and "allow_shortfall" not in err


@pytest.mark.parametrize("limit", ["0", "-5", "2"])
def test_train_names_limit_and_its_range(dataset, tmp_path, capsys, limit):
    status, _, err = run(capsys, "train", "--dataset", dataset, "--out", tmp_path / "run", "--backbone",
                         "mobilenet", "--weights", "none", "--limit", limit)
    assert_refused(status, err, "--limit must be a whole number from 3 to 9", f"got {limit}")


def test_train_refuses_more_folds_than_images_of_a_class(dataset, tmp_path, capsys):
    status, _, err = run(capsys, "train", "--dataset", dataset, "--out", tmp_path / "run", "--backbone",
                         "mobilenet", "--weights", "none", "--n-splits", "4", "--epochs", "1",
                         "--image-size", "32", "32")  # 3 normal images cannot fill 4 folds
    assert_refused(status, err, "--n-splits must be at most the number of images of each class (normal: 3), got 4")
    assert not list((tmp_path / "run").glob("fold-*.json"))


def test_assemble_select_from_reports_its_pixel_check(cxr_dir, dataset, tmp_path, capsys):
    status, out, err = run(capsys, "assemble", "--data", cxr_dir, "--out", tmp_path / "again",
                           "--select-from", dataset / "manifest.csv")
    assert status == 0, err
    assert f"against {dataset / 'manifest.csv'}: 12 same file, 0 same pixels" in out
    assert (tmp_path / "again/manifest.csv").read_bytes() == (dataset / "manifest.csv").read_bytes()


# ---- papermill: an unknown parameter is an error ----

def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("epochs = 10\nname = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("result = (epochs * 2, name)\nprint(result)")]
    nbformat.write(nb, path)
    return path


def test_execute_refuses_a_parameter_the_chapter_lacks_listing_the_known_ones(tmp_path, capsys):
    nb = _notebook(tmp_path / "chapter.ipynb")
    status, _, err = run(capsys, "execute", nb, tmp_path / "out.ipynb", "-p", "epoch", "1")
    assert_refused(status, err, "no parameter 'epoch' (a typo?); it takes epochs, name")
    assert not (tmp_path / "out.ipynb").exists()


def test_execute_runs_the_chapter_with_papermill_types(tmp_path, capsys):
    nb = _notebook(tmp_path / "chapter.ipynb")
    status, _, err = run(capsys, "execute", nb, tmp_path / "out.ipynb", "-p", "epochs", "3", "-r", "name", "7")
    assert status == 0, err
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "(6, '7')" in out.cells[-1].outputs[0]["text"]
    # the status page shows from which commit each committed page was executed
    from xray_transfer.provenance import git_commit
    assert out.metadata["xray"]["git_commit"] == git_commit()["commit"]


def test_execute_reports_a_failing_cell_in_one_message(tmp_path, capsys):
    nb = _notebook(tmp_path / "chapter.ipynb")
    content = nbformat.read(nb, as_version=4)
    content.cells.append(nbformat.v4.new_code_cell("raise ValueError('x.csv: damaged; rebuild it')"))
    nbformat.write(content, nb)
    status, _, err = run(capsys, "execute", nb, tmp_path / "out.ipynb")
    err = err[err.index("xray-transfer execute:"):]  # after papermill's progress bar
    assert_refused(status, err, "raised ValueError: x.csv: damaged; rebuild it",
                   f"the executed notebook {tmp_path / 'out.ipynb'} shows the traceback")
    assert (tmp_path / "out.ipynb").exists()


@pytest.mark.skipif(not (REPO / ".venv/bin/xray-transfer").exists(), reason="needs `make setup`")
def test_make_run_stops_on_a_misspelt_parameter_before_running(tmp_path):
    res = subprocess.run(["make", "-s", "-o", ".venv/.installed", "run", "CH=training", f"OUT={tmp_path}/run",
                          "ARGS=-p epoch 1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "no parameter 'epoch' (a typo?)" in res.stderr and "epochs" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run" / "training.ipynb").exists()

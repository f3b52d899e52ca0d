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
    assert_refused(status, err, "learning_rate must be a finite number in (0, 1]")
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

"""The status page's list: every page of the table of contents that holds code, with how, when
and from which commit it was executed."""
import json
import subprocess

import nbformat

from xray_transfer import book_status


def _notebook(path, code, tags=(), metadata=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A page")]
    nb.cells += [nbformat.v4.new_code_cell(c, metadata={"tags": list(tags)}) for c in code]
    nb.metadata.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_pages_with_code_follow_the_toc_and_skip_pages_without_code(tmp_path):
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n    numbered: true\n    chapters:\n"
        "      - file: notebooks/chapter\n        sections:\n          - file: artifacts/run/page\n"
        "      - file: artifacts/params-only/page\n      - file: book/prose\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\n```{code-cell} ipython3\nx = 1\n```\n")
    (tmp_path / "book" / "prose.md").write_text("# Prose\n\n```python\nnot a code cell\n```\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "chapter.md").write_text("# Chapter\n\n```{code-cell} ipython3\ny = 2\n```\n")
    end = "2026-11-27T18:14:26.301211"
    _notebook(tmp_path / "artifacts" / "run" / "page.ipynb", ["z = 3"],
              metadata={"papermill": {"end_time": end}, "xray": {"git_commit": "a" * 40, "git_dirty": False}})
    _notebook(tmp_path / "artifacts" / "params-only" / "page.ipynb", ["p = 1"], tags=["injected-parameters"])
    assert book_status.pages_with_code(tmp_path) == ["book/intro", "notebooks/chapter", "artifacts/run/page"]
    run = book_status.execution("artifacts/run/page", tmp_path)
    assert run == {"page": "artifacts/run/page", "how": "papermill, committed", "when": "2026-11-27 18:14",
                   "commit": "aaaaaaa"}


def test_a_papermill_page_without_a_recorded_commit_names_the_commit_that_committed_it(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: artifacts/page\n")
    end = "2026-11-28T12:15:00.000001"
    _notebook(tmp_path / "artifacts" / "page.ipynb", ["z = 3"], metadata={"papermill": {"end_time": end}})
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "page executed"], check=True)
    sha = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    table = book_status.execution_table(tmp_path)
    assert table.to_dict("records") == [{"page": "artifacts/page", "how": "papermill, committed",
                                         "when": "2026-11-28 12:15", "commit": f"committed in {sha}"}]
    json.loads((tmp_path / "artifacts" / "page.ipynb").read_text())  # left as it was

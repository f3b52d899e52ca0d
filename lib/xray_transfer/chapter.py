"""Execute a chapter with papermill, refusing parameter names its parameters cell lacks.

Papermill only warns about an unknown name (``-p epoch 1``) and runs the chapter with
its defaults; here that is an error listing the names the chapter takes. ``make run``
goes through :func:`execute` (as ``xray-transfer execute``), which also records the git
commit of the executing code in the executed notebook's metadata.
"""
from __future__ import annotations

from pathlib import Path


class UnknownParameter(ValueError):
    """A parameter name the chapter's parameters cell does not define."""


class ChapterFailed(RuntimeError):
    """A cell of the chapter raised; the message gives the error and where the executed notebook is."""


def chapter_parameters(notebook) -> list[str]:
    """Names defined in the notebook's cell tagged ``parameters`` (papermill's own reading)."""
    import papermill

    return sorted(papermill.inspect_notebook(str(notebook)))


def check_parameters(notebook, names) -> None:
    """Raise :class:`UnknownParameter` for any of ``names`` the chapter does not take."""
    known = chapter_parameters(notebook)
    unknown = [n for n in names if n not in known]
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it has no parameters cell"
        raise UnknownParameter(f"{notebook}: no parameter {', '.join(map(repr, unknown))} (a typo?); {takes}")


def execute(notebook, output, parameters=(), raw=(), cwd=None) -> Path:
    """Check the parameter names, then execute ``notebook`` into ``output`` with papermill.

    Parameters
    ----------
    notebook, output : path
        The chapter as ``.ipynb`` and the executed copy to write.
    parameters : sequence of (name, value) str pairs
        Typed as ``papermill -p`` types them (``True``, ``None``, integers, floats, text).
    raw : sequence of (name, value) str pairs
        Kept as text (``papermill -r``).
    cwd : path, optional
        Working folder of the kernel.

    Raises
    ------
    xray_transfer.safety.Refused
        If ``output`` is ``notebook``, does not end in ``.ipynb``, or is an existing file
        that is not a notebook.
    UnknownParameter
        Before anything runs, for a name the chapter's parameters cell lacks.
    ChapterFailed
        If a cell raises; the executed notebook keeps the full traceback.
    """
    import papermill
    from papermill.cli import _resolve_type  # how `papermill -p` types a value

    from .safety import Refused

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no such notebook")
    if output.suffix != ".ipynb":
        raise Refused(f"{output}: the executed notebook must end in .ipynb")
    if output.resolve() == notebook.resolve():
        raise Refused(f"{output}: is the notebook to execute; write the executed copy elsewhere")
    if output.exists() and not _is_notebook(output):
        raise Refused(f"{output}: exists and is not a notebook, so it is left alone; choose another output")
    params = {name: _resolve_type(value) for name, value in parameters}
    params.update(dict(raw))
    check_parameters(notebook, list(params))
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=params, cwd=cwd)
    except papermill.PapermillExecutionError as err:
        raise ChapterFailed(f"{notebook}: cell {err.exec_count} raised {err.ename}: {err.evalue}; the executed "
                            f"notebook {output} shows the traceback") from None
    record_commit(output)
    return output


def _is_notebook(path) -> bool:
    import nbformat
    try:
        nbformat.read(str(path), as_version=4)
        return True
    except Exception:  # nbformat raises JSON, validation or reading errors of several kinds
        return False


def record_commit(output) -> None:
    """Write the git commit of the executing code into the notebook's metadata (``xray.git_commit``,
    ``xray.git_dirty``), which the book's status page shows."""
    import json
    import os

    from .provenance import git_commit, portable_path

    output = Path(output)
    nb = json.loads(output.read_text())
    git = git_commit()
    nb.setdefault("metadata", {})["xray"] = {"git_commit": git["commit"], "git_dirty": git["dirty"]}
    for key in ("input_path", "output_path"):  # papermill's record of them: no machine path in a committed page
        pm = nb["metadata"].get("papermill", {})
        if isinstance(pm.get(key), str):
            pm[key] = portable_path(pm[key])
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, output)

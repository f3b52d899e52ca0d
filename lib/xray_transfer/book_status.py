"""Which pages of the book hold code, and when and from which commit each was executed.

The status page renders :func:`execution_table`; the book test checks it against the built
pages. Pages under ``artifacts/`` are executed by papermill and committed; the others are
executed by every ``make book``.
"""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

import pandas as pd

from .provenance import REPO, git_commit


def toc_files(repo=REPO) -> list[str]:
    """The documents of ``_toc.yml`` in reading order, without extension (``notebooks/results``)."""
    import yaml

    toc = yaml.safe_load((Path(repo) / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return out


def source_of(doc: str, repo=REPO) -> Path | None:
    """The file behind a table-of-contents entry (``.ipynb`` or ``.md``)."""
    for ext in (".ipynb", ".md"):
        path = Path(repo) / f"{doc}{ext}"
        if path.is_file():
            return path
    return None


def code_cells(path: Path) -> int:
    """Code cells of a page, parameters injected by papermill not counted."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        return sum(c["cell_type"] == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])
                   for c in nb["cells"])
    return path.read_text().count("```{code-cell}")


def pages_with_code(repo=REPO) -> list[str]:
    """The table-of-contents entries whose page holds at least one code cell."""
    return [d for d in toc_files(repo) if (p := source_of(d, repo)) is not None and code_cells(p)]


def _git(repo, *args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def execution(doc: str, repo=REPO, now=None) -> dict:
    """How, when (UTC) and from which commit the page ``doc`` was executed.

    A committed notebook gives papermill's end time; its commit is the one recorded in the
    notebook's ``xray`` metadata by ``xray-transfer execute``, or else the commit that
    committed that execution (found by its end time in the git history). Other pages are
    executed by this build, at ``now`` from the checked-out commit.
    """
    path = source_of(doc, repo)
    if path.suffix == ".md":
        git = git_commit(repo)
        when = now or _dt.datetime.now(_dt.timezone.utc)
        return {"page": doc, "how": "every book build", "when": when.strftime("%Y-%m-%d %H:%M"),
                "commit": git["commit"][:7] + (" (modified)" if git["dirty"] else "")}
    meta = json.loads(path.read_text()).get("metadata", {})
    end = (meta.get("papermill") or {}).get("end_time")
    commit = (meta.get("xray") or {}).get("git_commit")
    if commit:
        commit = commit[:7]
    elif end:
        found = _git(repo, "log", "--format=%h", "--reverse", f'-S"end_time": "{end}"', "--",
                     str(path.relative_to(repo))).splitlines()
        commit = f"committed in {found[0][:7]}" if found else "unknown"
    else:
        commit = "unknown"
    when = _dt.datetime.fromisoformat(end).strftime("%Y-%m-%d %H:%M") if end else "unknown"
    return {"page": doc, "how": "papermill, committed", "when": when, "commit": commit}


def execution_table(repo=REPO, now=None) -> pd.DataFrame:
    """One row per page with code, in reading order: page, how executed, when (UTC), commit."""
    return pd.DataFrame([execution(d, repo, now) for d in pages_with_code(repo)],
                        columns=["page", "how", "when", "commit"])

"""What every run artifact records about where it came from."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

#: Set on machines without the git history (a GPU machine gets a copy of the tree).
COMMIT_ENV = "XRAY_GIT_COMMIT"
#: Folders a record names by their environment variable instead of their machine path.
PATH_ENVS = ("XRAY_WEIGHTS_DIR", "XRAY_DATA_DIR")
REPO = Path(__file__).resolve().parents[2]
#: An absolute path of some machine (``/work/...``, ``/home/...``, ``C:\\Users\\...``); URLs do not match.
MACHINE_PATH = re.compile(r"(?<![\w.~:/$-])/(?:work|home|tmp|root|Users|mnt|scratch|srv|opt|var|data)/[\w.-]+"
                          r"|\b[A-Z]:\\\\?Users\\")
PACKAGES = ("keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "torch", "numpy",
            "scikit-learn", "pillow", "xray-transfer")


def _head(repo) -> dict:
    """HEAD commit of ``repo`` now and whether its tracked lib/ or notebooks/ files differ from it;
    ``$XRAY_GIT_COMMIT`` where git is absent."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lib", "notebooks"],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty), "source": "git"}
    except (OSError, subprocess.CalledProcessError):
        sha = os.environ.get(COMMIT_ENV)
        return {"commit": sha or "unknown", "dirty": None, "source": COMMIT_ENV if sha else "unavailable"}


#: This project's HEAD when the package was imported (``xray_transfer/__init__`` imports this module).
_LOADED = _head(REPO)


def git_commit(repo=None) -> dict:
    """The commit of the code this process runs: HEAD when :mod:`xray_transfer` was imported, so a
    long run's records name the code it loaded even when later commits land while it runs.
    With ``repo``, that repository's HEAD now. ``$XRAY_GIT_COMMIT`` where git is absent."""
    return dict(_LOADED) if repo is None else _head(repo)


def portable_path(path, envs=PATH_ENVS, repo=REPO) -> str:
    """``path`` as a record stores it: relative to the repository, or under ``$XRAY_WEIGHTS_DIR``
    or ``$XRAY_DATA_DIR``, never as this machine's absolute path.

    A path inside a folder named by one of ``envs`` becomes ``$NAME/rest``; one inside the
    repository becomes relative to it; any other absolute path keeps only its file name
    (the record's hashes identify the file). Words such as ``"none"`` pass unchanged.

    Examples
    --------
    >>> portable_path("/elsewhere/w/vgg19.weights.h5", envs=(), repo=Path("/r"))
    'vgg19.weights.h5'
    >>> portable_path("/r/artifacts/runs/vgg19", envs=(), repo=Path("/r"))
    'artifacts/runs/vgg19'
    >>> portable_path("none")
    'none'
    """
    text = str(path)
    if not os.path.isabs(text):
        return text
    forms = {Path(os.path.normpath(text)), Path(os.path.realpath(text))}
    roots = [(f"${name}", os.environ[name]) for name in envs if os.environ.get(name)] + [("", str(repo))]
    for prefix, root in roots:
        for r in {Path(os.path.normpath(os.path.abspath(root))), Path(os.path.realpath(root))}:
            for p in forms:
                if p.is_relative_to(r):
                    rel = p.relative_to(r).as_posix()
                    if not prefix:
                        return rel
                    return prefix + ("" if rel == "." else f"/{rel}")
    return Path(text).name


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device() -> str:
    """The accelerator the Keras backend computes on, or the CPU model."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            d = jax.devices()[0]
            if d.platform != "cpu":
                return f"{d.platform}: {d.device_kind}"
        elif backend == "tensorflow":
            import tensorflow as tf
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')}"
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                return f"gpu: {torch.cuda.get_device_name(0)}"
    except Exception as err:  # report, don't hide
        return f"unknown ({type(err).__name__}: {err})"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} x{os.cpu_count()}"


def environment() -> dict:
    """Backend, device, library versions, git commit and time: stored in every run record."""
    import keras

    return {"backend": keras.backend.backend(), "device": device(), "versions": versions(),
            "git": git_commit(), "host": platform.node(),
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def record_sha256(record: dict) -> str:
    """SHA-256 of a JSON record without its own ``record_sha256`` field (keys sorted), to detect edits."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

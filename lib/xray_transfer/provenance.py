"""What every run artifact records about where it came from."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

#: Set on machines without the git history (a GPU machine gets a copy of the tree).
COMMIT_ENV = "XRAY_GIT_COMMIT"
PACKAGES = ("keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "torch", "numpy",
            "scikit-learn", "pillow", "xray-transfer")


def git_commit(repo=None) -> dict:
    """HEAD commit and whether tracked files differ from it; ``$XRAY_GIT_COMMIT`` where git is absent."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lib", "notebooks"],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty), "source": "git"}
    except (OSError, subprocess.CalledProcessError):
        sha = os.environ.get(COMMIT_ENV)
        return {"commit": sha or "unknown", "dirty": None, "source": COMMIT_ENV if sha else "unavailable"}


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

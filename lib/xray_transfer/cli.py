"""Command line: ``xray-transfer assemble|pack|train|final|predict|benchmark|execute|experiments`` (see ``--help``).

The chapters call the same library functions; the command line is for machines
without Jupyter (a GPU machine) and for the Makefile. A failure prints what went
wrong, naming the file, and exits with status 1; ``--debug`` (or ``XRAY_DEBUG=1``)
shows the Python traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

#: Environment variable that turns on tracebacks (like ``--debug``).
DEBUG_ENV = "XRAY_DEBUG"
#: The library's messages name Python arguments; the command line's name its flags.
FLAGS = [(r"\ballow_shortfall=True", "--allow-shortfall"), (r"\bon_error='skip'", "--skip-bad"),
         (r"\bselect_from=", "--select-from "), (r"\bdata_dir\b", "--data"),
         (r"\b(n_splits|epochs|batch_size|learning_rate|seed|limit|image_size|batchnorm|scaling|resize|augment)"
          r"\b(?= must)",
          lambda m: "--" + m.group(1).replace("_", "-"))]


#: ``--precision`` of the training commands (``xray_transfer.models.PRECISIONS``).
PRECISION_FLAG = dict(choices=["float32", "mixed_bfloat16"], default="float32",
                      help="arithmetic: float32 (default) or mixed_bfloat16 (bfloat16 compute, float32 weights; "
                           "an option for speed on a GPU)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show the Python traceback of an error (also {DEBUG_ENV}=1)")
    p = argparse.ArgumentParser(prog="xray-transfer", description=__doc__, parents=[debug],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[debug], **kw)  # noqa: E731

    a = add("assemble", help="select and letterbox the dataset from the collections")
    a.add_argument("--data", default=None, help="collections folder (default $XRAY_DATA_DIR)")
    a.add_argument("--out", default="data/dataset")
    a.add_argument("--allow-shortfall", action="store_true",
                   help="take all images of a class that has fewer than the paper's count (recorded) "
                        "instead of stopping")
    a.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")
    a.add_argument("--select-from", default=None, metavar="MANIFEST",
                   help="take exactly the images a manifest.csv lists (e.g. artifacts/dataset/manifest.csv) "
                        "instead of drawing them")

    k = add("pack", help="pack the dataset cache into one .npz to carry to another machine")
    k.add_argument("--dataset", default="data/dataset")
    k.add_argument("--out", default="data/dataset.npz")

    t = add("train", help="cross-validate one backbone (resumes finished folds)")
    add_training_args(t)
    t.add_argument("--out", required=True, help="run folder (artifacts)")
    t.add_argument("--n-splits", type=int, default=10)
    t.add_argument("--split-seed", type=int, default=None,
                   help="draw the folds with this seed instead of --seed, to hold the split fixed")
    t.add_argument("--limit", type=int, default=None, help="stratified subset of this many images")
    t.add_argument("--group-by-patient", action="store_true")
    t.add_argument("--image-mask", default="none", choices=["none", "lungs_hidden", "lungs_hidden_in_frame"])
    t.add_argument("--fast", default="auto", choices=["auto", "on", "off"])
    t.add_argument("--folds-together", action="store_true",
                   help="train the folds at once as one compiled JAX program (KERAS_BACKEND=jax; faster on a GPU)")

    # no --split-seed: a final model trains on every image, so no folds are drawn
    f = add("final", help="train on all images with the protocol and save the model (.keras)")
    add_training_args(f)
    f.add_argument("--out", default=None, help="model file (default data/models/<backbone>.keras)")

    q = add("predict", help="class probabilities for every X-ray in a folder (CSV)")
    q.add_argument("--model", required=True, help="a .keras file from `xray-transfer final`")
    q.add_argument("--input", required=True, help="folder of images (searched recursively)")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")

    b = add("benchmark", help="time plain model.fit against our trainer, per backbone")
    b.add_argument("--dataset", default="data/dataset")
    b.add_argument("--out", default="artifacts/benchmark")
    b.add_argument("--backbones", nargs="+", default=None)
    b.add_argument("--epochs", type=int, default=2)
    b.add_argument("--limit", type=int, default=None)
    b.add_argument("--n-splits", type=int, default=10, help="folds of the protocol the times are for")
    b.add_argument("--protocol-epochs", type=int, default=10, help="epochs of the protocol the times are for")
    b.add_argument("--image-size", type=int, nargs=2, default=[200, 266], metavar=("HEIGHT", "WIDTH"))
    b.add_argument("--precision", **PRECISION_FLAG)
    b.add_argument("--together", action="store_true",
                   help="also time every fold of the split at once, as one compiled JAX program (KERAS_BACKEND=jax)")

    e = add("experiments", help="every experiment of the book: list them, or run any part of them on Dask")
    esub = e.add_subparsers(dest="action", required=True)
    el = esub.add_parser("list", parents=[debug], help="each experiment: done, running, partial or missing")
    el.add_argument("names", nargs="*", help="names or shell patterns (quoted), e.g. 'audit/*' (default: all)")
    el.add_argument("--out", default="artifacts", help="output root holding runs/, audit/, models/, benchmark/")
    el.add_argument("--todo", action="store_true", help="print only the names of those not done that this machine can make "
                    "(backend, device), a line each")
    er = esub.add_parser("run", parents=[debug], help="make what is missing, fold by fold, on a Dask cluster")
    er.add_argument("names", nargs="*", help="names or shell patterns (quoted); default: every one not done")
    er.add_argument("--dataset", default="data/dataset", help="dataset folder or .npz pack")
    er.add_argument("--out", default="artifacts", help="output root (runs/, audit/, models/, benchmark/)")
    er.add_argument("--models", default="data/models", help="folder of the final models' .keras files")
    er.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (default: a "
                    "LocalCluster here, 1 worker on a CPU, several per GPU)")
    er.add_argument("--workers", type=int, default=None, help="workers of the LocalCluster")
    er.add_argument("--weights", default="offline", help="initial weights, as for train")
    er.add_argument("--smoke", action="store_true", help="tiny settings (60 images, 2 folds, 1 epoch, 75x100) "
                    "to check a grid; use another --out")
    er.add_argument("--commit", action="store_true", help="commit each fold, model and benchmark into this git "
                    "checkout as it lands (a long CPU run)")
    er.add_argument("--pages", action="store_true", help="render the training page of each run as it completes "
                    "(and, after a paper run, Tables 1-3 and README's block)")
    er.add_argument("--no-progress", action="store_true", help="no progress bar")
    er.add_argument("--folds-together", action="store_true",
                    help="a task per run: its missing folds trained at once as one compiled JAX program "
                         "(KERAS_BACKEND=jax; the same runs, faster on a GPU)")
    er.add_argument("--precision", choices=PRECISION_FLAG["choices"], default=None,
                    help="train every chosen experiment in this precision (default: each one's own); "
                         "only with --smoke, unless it is each one's own")

    x = add("execute", help="execute a chapter with papermill, refusing parameters the chapter does not have")
    x.add_argument("notebook", help="the chapter as .ipynb (`make run` converts notebooks/<chapter>.md)")
    x.add_argument("output", help="the executed notebook to write")
    x.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter, typed as papermill -p does (True, 1, 1e-4, text)")
    x.add_argument("-r", "--parameters-raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter kept as text")
    x.add_argument("--cwd", default=None, help="working folder of the kernel")
    return p


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags that ``train`` and ``final`` share (see :func:`training_params`).

    The choices of --batchnorm, --scaling, --resize and --augment are checked by
    :func:`xray_transfer.train.make_config`, so a bad value gets its one-line message (exit 1).
    """
    parser.add_argument("--dataset", default="data/dataset", help="dataset folder or .npz pack")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--weights", default="offline",
                        help="'offline' (the registered ImageNet file in $XRAY_WEIGHTS_DIR, default "
                             "../shared/weights), 'imagenet' (Keras download), 'none' (random) or a .weights.h5 path")
    parser.add_argument("--batchnorm", default="keras2", help="keras2 (default), batch_statistics or inference")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the random initial weights and dropout, the batch order and (train) the folds")
    parser.add_argument("--scaling", default="preprocess_input",
                        help="pixel scaling: each backbone's preprocess_input (default) or unit ([0, 1])")
    parser.add_argument("--resize", default="letterbox",
                        help="letterbox (default) or stretch (the X-ray stretched to fill the frame)")
    parser.add_argument("--augment", default="none",
                        help="none (default) or light: small random rotations, shifts and zoom while training "
                             "(no flip)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[200, 266], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--precision", **PRECISION_FLAG)


def training_params(args) -> dict:
    """The parameters of :func:`add_training_args` for the library, checked (one message for a bad one)."""
    from .train import make_config

    params = dict(backbone=args.backbone, weights=args.weights, batchnorm=args.batchnorm, epochs=args.epochs,
                  batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                  scaling=args.scaling, resize=args.resize, augment=args.augment, image_size=tuple(args.image_size),
                  precision=args.precision)
    make_config(**{**params, "weights": "none"})  # the choices now; the weights file after the dataset, as before
    return params


def main(argv=None) -> int:
    """Run one command; on an error print its message (no traceback) and return 1."""
    args = build_parser().parse_args(argv)
    debug = is_debug(args)
    try:
        return run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"xray-transfer {args.cmd}: interrupted; outputs are written whole or not at all", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 -- the one place that turns errors into messages
        if debug:
            raise
        print(f"xray-transfer {args.cmd}: {with_flags(describe(err))}", file=sys.stderr)
        print(f"(for the Python traceback run again with --debug or {DEBUG_ENV}=1)", file=sys.stderr)
        return 1


def is_debug(args) -> bool:
    """Whether ``--debug`` or ``XRAY_DEBUG=1`` asks for tracebacks (and Dask's INFO lines)."""
    return getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(err: BaseException) -> str:
    """The message of an error for a reader; unexpected kinds keep their type name.

    >>> describe(FileNotFoundError(2, "No such file or directory", "x.csv"))
    "[Errno 2] No such file or directory: 'x.csv'"
    >>> describe(KeyError("patientid"))
    "unexpected KeyError: 'patientid' (please report it, with the --debug output)"
    """
    text = str(err).strip() or type(err).__name__
    if isinstance(err, (OSError, ValueError, RuntimeError, FloatingPointError)):
        return text
    return f"unexpected {type(err).__name__}: {text} (please report it, with the --debug output)"


def with_flags(text: str) -> str:
    """A library message with the command line's flags in place of Python's argument names.

    >>> with_flags("only 7 found; pass allow_shortfall=True to take all 7")
    'only 7 found; pass --allow-shortfall to take all 7'
    >>> with_flags("n_splits must be at least 2, got 1")
    '--n-splits must be at least 2, got 1'
    """
    for pattern, flag in FLAGS:
        text = re.sub(pattern, flag, text)
    return text


def run(args) -> int:
    """Carry out the parsed command ``args``."""
    from .safety import Refused, check_apart, check_model_path, check_output_folder

    if args.cmd == "assemble":
        from .data import assemble
        info = assemble(args.data, args.out, allow_shortfall=args.allow_shortfall,
                        on_error="skip" if args.skip_bad else "raise", select_from=args.select_from)
        print(json.dumps({k: v for k, v in info.items() if k not in ("skipped", "pixel_check")}, indent=1))
        for line in info["skipped"]:
            print(f"skipped {line}", file=sys.stderr)
        print(f"skipped {len(info['skipped'])} file(s) (listed in {args.out}/dataset.json)")
        if "pixel_check" in info:
            check = info["pixel_check"]
            print(f"against {args.select_from}: {check['same file']} same file, {check['same pixels']} same pixels, "
                  f"{len(check['pixels differ'])} with other pixels (re-encoded?), "
                  f"{len(check['not checked (other size)'])} of another size, not checked "
                  f"(listed in {args.out}/dataset.json)")
    elif args.cmd == "pack":
        from .data import pack
        check_apart(args.out, args.dataset, "dataset")
        if Path(args.out).suffix != ".npz":
            raise Refused(f"{args.out}: a pack must end in .npz")
        if Path(args.out).exists() and not _is_pack(args.out):
            raise Refused(f"{args.out}: exists and is not a pack of this command, so it is left alone; "
                          "choose another file")
        print(pack(args.dataset, args.out))
    elif args.cmd == "train":
        from .data import load_dataset
        from .train import cross_validate
        check_apart(args.out, args.dataset, "dataset")
        check_output_folder(args.out, "run")
        params = training_params(args)
        ds = load_dataset(args.dataset, limit=args.limit, seed=args.seed)
        fast = {"auto": "auto", "on": True, "off": False}[args.fast]
        rec = cross_validate(ds, args.out, n_splits=args.n_splits, fast=fast, group_by_patient=args.group_by_patient,
                             image_mask=args.image_mask, split_seed=args.split_seed,
                             folds_together=args.folds_together, **params)
        print(f"{args.backbone}: folds done {rec['folds_done']}, made by this process {rec.get('made_here', [])}")
    elif args.cmd == "final":
        from .data import load_dataset
        from .train import fit_final
        out = args.out or f"data/models/{args.backbone}.keras"
        check_apart(out, args.dataset, "dataset")
        check_model_path(out)
        params = training_params(args)
        rec = fit_final(load_dataset(args.dataset), out, **params)
        print(f"{out}: sha256 {rec['model_sha256']}, {rec['fit_seconds']:.0f} s")
    elif args.cmd == "predict":
        from .predict import predict_folder
        res = predict_folder(args.model, args.input, args.out, on_error="raise" if args.strict else "skip")
        print(json.dumps({k: v for k, v in res.items() if k != "warnings"}))
        for line in res["warnings"]:
            print(f"warning: {line}", file=sys.stderr)
        if res["skipped"]:
            print(f"{res['skipped']} file(s) not predicted; the 'error' column of {args.out} says why", file=sys.stderr)
    elif args.cmd == "benchmark":
        from .benchmark import run_benchmark
        check_apart(args.out, args.dataset, "dataset")  # run_benchmark checks benchmark.json before any work
        run_benchmark(args.dataset, args.out, backbones=args.backbones, epochs=args.epochs, limit=args.limit,
                      n_splits=args.n_splits, protocol_epochs=args.protocol_epochs, image_size=tuple(args.image_size),
                      precision=args.precision, together=args.together)
    elif args.cmd == "experiments":
        return experiments(args)
    elif args.cmd == "execute":
        from .chapter import execute
        execute(args.notebook, args.output, parameters=args.parameters, raw=args.parameters_raw, cwd=args.cwd)
    return 0


def experiments(args) -> int:
    """``xray-transfer experiments list|run``: the grid of :mod:`xray_transfer.experiments`."""
    from . import experiments as grid

    chosen = grid.select(args.names or None)
    manifest = grid.manifest_of(args.out)
    states = {e.name: grid.status(e, args.out, manifest) for e in chosen}
    if args.action == "list":
        if args.todo:
            device = "gpu" if grid.gpu_count() else "cpu"
            print("\n".join(e.name for e in chosen if states[e.name]["state"] != "done"
                            and not grid.check_machine(e, device)))
            return 0
        width = max(len(e.name) for e in chosen)
        for e in chosen:
            st = states[e.name]
            print(f"{e.name:<{width}}  {st['state']:<8} {st['done']:>2}/{st['of']:<2}  {e.kind:<5} {args.out}/{e.out}")
        done = sum(st["state"] == "done" for st in states.values())
        print(f"{done} of {len(chosen)} done")
        return 0
    from .safety import check_apart
    check_apart(args.out, args.dataset, "dataset")
    if not Path(args.dataset).exists():
        raise FileNotFoundError(f"--dataset {args.dataset}: not found; `make dataset` assembles it, `make pack` packs it")
    todo = [e for e in chosen if states[e.name]["state"] != "done"]
    other = [e.name for e in todo if args.precision and args.precision != e.params.get("precision", "float32")]
    if other and not args.smoke:
        raise ValueError(f"--precision {args.precision}: {', '.join(other[:3])}{' ...' if len(other) > 3 else ''} "
                         f"would hold a run its name does not describe; run the 'precision/*' experiments, or "
                         "check a grid with --smoke and another --out")
    device = "gpu" if grid.gpu_count() else "cpu"
    refused = {e.name: why for e in todo if (why := grid.check_machine(e, device))}
    if refused and args.names:
        raise ValueError("; ".join(refused.values()))
    for name, why in refused.items():
        print(f"left out: {why}", file=sys.stderr)
    todo = [e for e in todo if e.name not in refused]
    if args.smoke:  # a smoke check makes no final models (their .keras files would replace real ones)
        todo = [e for e in todo if e.kind != "final"] if args.models == "data/models" else todo
    for e in list(todo):
        why = grid.missing_weights(e, args.weights)
        if why:
            print(f"left out {e.name}: {why}", file=sys.stderr)
            todo.remove(e)
    if not todo:
        print("nothing to make: every experiment chosen is done (`xray-transfer experiments list`)")
        return 0
    print(f"to make, in priority order: {', '.join(e.name for e in todo)}")
    if args.folds_together:
        from .fold_parallel import check_backend
        check_backend()  # this process's Keras is the local workers' (a remote cluster's workers check again)
    client, kind = grid.connect(args.scheduler, args.workers, debug=is_debug(args))
    try:
        on_done = (grid.after_each_task(args.out, args.dataset, commit=args.commit, pages=args.pages)
                   if args.commit or args.pages else None)
        settings = {**(grid.SMOKE if args.smoke else {}), **({"precision": args.precision} if args.precision else {})}
        entries = grid.run_grid(todo, args.dataset, args.out, client, settings=settings or None,
                                weights=args.weights, models=args.models, scheduler=kind, on_done=on_done,
                                progress=not args.no_progress, together=args.folds_together)
    finally:
        client.close()
        if client.cluster is not None:
            client.cluster.close()
    failed = [e for e in entries if e["status"].startswith("failed")]
    for e in failed:
        print(f"{e['experiment']} fold {e['fold']}: {e['status']}", file=sys.stderr)
    print(f"{len(entries) - len(failed)} task(s) done, {len(failed)} failed; log in {args.out}/grid-log.jsonl")
    return 1 if failed else 0


def _is_pack(path) -> bool:
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"blob", "offsets", "manifest_sha256"} <= set(z.files)
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())

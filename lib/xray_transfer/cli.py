"""Command line: ``xray-transfer assemble|pack|train|benchmark|predict`` (see ``--help``).

The chapters call the same library functions; the command line is for machines
without Jupyter (a GPU machine) and for the Makefile.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="xray-transfer", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("assemble", help="select and letterbox the dataset from the collections")
    a.add_argument("--data", default=None, help="collections folder (default $XRAY_DATA_DIR)")
    a.add_argument("--out", default="data/dataset")
    a.add_argument("--allow-shortfall", action="store_true",
                   help="take all images of a class that has fewer than the paper's count (recorded) "
                        "instead of stopping")
    a.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")

    k = sub.add_parser("pack", help="pack the dataset cache into one .npz to carry to another machine")
    k.add_argument("--dataset", default="data/dataset")
    k.add_argument("--out", default="data/dataset.npz")

    t = sub.add_parser("train", help="cross-validate one backbone (resumes finished folds)")
    t.add_argument("--dataset", default="data/dataset", help="dataset folder or .npz pack")
    t.add_argument("--out", required=True, help="run folder (artifacts)")
    t.add_argument("--backbone", required=True)
    t.add_argument("--weights", default="offline",
                   help="'offline' (the registered ImageNet file in $XRAY_WEIGHTS_DIR, default ../shared/weights), "
                        "'imagenet' (Keras download), 'none' (random) or a .weights.h5 path")
    t.add_argument("--batchnorm", default="batch_statistics", choices=["batch_statistics", "inference"])
    t.add_argument("--n-splits", type=int, default=10)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--learning-rate", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=None, help="stratified subset of this many images")
    t.add_argument("--group-by-patient", action="store_true")
    t.add_argument("--image-mask", default="none", choices=["none", "lungs_hidden"])
    t.add_argument("--fast", default="auto", choices=["auto", "on", "off"])
    t.add_argument("--image-size", type=int, nargs=2, default=[200, 266], metavar=("HEIGHT", "WIDTH"))

    f = sub.add_parser("final", help="train on all images with the protocol and save the model (.keras)")
    f.add_argument("--dataset", default="data/dataset")
    f.add_argument("--backbone", required=True)
    f.add_argument("--weights", default="offline", help="as for train")
    f.add_argument("--batchnorm", default="batch_statistics", choices=["batch_statistics", "inference"])
    f.add_argument("--out", default=None, help="model file (default data/models/<backbone>.keras)")
    f.add_argument("--epochs", type=int, default=10)

    q = sub.add_parser("predict", help="class probabilities for every X-ray in a folder (CSV)")
    q.add_argument("--model", required=True, help="a .keras file from `xray-transfer final`")
    q.add_argument("--input", required=True, help="folder of images (searched recursively)")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")

    b = sub.add_parser("benchmark", help="time plain model.fit against the fast path, per backbone")
    b.add_argument("--dataset", default="data/dataset")
    b.add_argument("--out", default="artifacts/benchmark")
    b.add_argument("--backbones", nargs="+", default=None)
    b.add_argument("--epochs", type=int, default=2)
    b.add_argument("--limit", type=int, default=None)
    b.add_argument("--n-splits", type=int, default=10, help="folds of the protocol the times are for")
    b.add_argument("--protocol-epochs", type=int, default=10, help="epochs of the protocol the times are for")
    b.add_argument("--image-size", type=int, nargs=2, default=[200, 266], metavar=("HEIGHT", "WIDTH"))

    args = p.parse_args(argv)
    if args.cmd == "assemble":
        from .data import assemble
        info = assemble(args.data, args.out, allow_shortfall=args.allow_shortfall,
                        on_error="skip" if args.skip_bad else "raise")
        print(json.dumps({k: v for k, v in info.items() if k != "skipped"}, indent=1))
        print(f"skipped {len(info['skipped'])} unreadable images")
    elif args.cmd == "pack":
        from .data import pack
        print(pack(args.dataset, args.out))
    elif args.cmd == "train":
        from .data import load_dataset
        from .train import cross_validate
        ds = load_dataset(args.dataset, limit=args.limit, seed=args.seed)
        fast = {"auto": "auto", "on": True, "off": False}[args.fast]
        rec = cross_validate(ds, args.out, backbone=args.backbone, weights=args.weights,
                             n_splits=args.n_splits, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, seed=args.seed, fast=fast,
                             group_by_patient=args.group_by_patient, image_mask=args.image_mask,
                             image_size=tuple(args.image_size), batchnorm=args.batchnorm)
        print(f"{args.backbone}: folds done {rec['folds_done']}")
    elif args.cmd == "final":
        from .data import load_dataset
        from .train import fit_final
        out = args.out or f"data/models/{args.backbone}.keras"
        rec = fit_final(load_dataset(args.dataset), out, backbone=args.backbone, weights=args.weights,
                        epochs=args.epochs, batchnorm=args.batchnorm)
        print(f"{out}: sha256 {rec['model_sha256']}, {rec['fit_seconds']:.0f} s")
    elif args.cmd == "predict":
        from .predict import predict_folder
        res = predict_folder(args.model, args.input, args.out, on_error="raise" if args.strict else "skip")
        print(json.dumps(res))
        if res["skipped"]:
            print(f"{res['skipped']} unreadable file(s) skipped; see the 'error' column of {args.out}", file=sys.stderr)
    elif args.cmd == "benchmark":
        from .benchmark import run_benchmark
        run_benchmark(args.dataset, args.out, backbones=args.backbones, epochs=args.epochs, limit=args.limit,
                      n_splits=args.n_splits, protocol_epochs=args.protocol_epochs, image_size=tuple(args.image_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the results are shown: Markdown tables, generated sentences, the README block and the
at-a-glance figure, from the arithmetic of :mod:`xray_transfer.results`.

Nothing here computes a score; every number comes from :mod:`.results` (runs, pooled
metrics, the paper's bounds), :mod:`.audit` or :mod:`.compare`.

Command line (also ``python -m xray_transfer.results``)::

    python -m xray_transfer.report --write   # regenerate results/table{1,2,3}.csv, the README block
    python -m xray_transfer.report --check   # exit 1 if those are stale
    python -m xray_transfer.report --glance book/images/at_a_glance.png   # the at-a-glance figure
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from . import paper
from .models import TABLE1, get_backbone
from .results import (METRIC_NAMES, METRICS, NOT_RUN, TABLE_FILES, MixedRunsError, backend_name, folds_label,
                      is_complete, largest_gaps, load_runs, render, short_device, table2, to_csv)

#: What the paper's asterisk means (its Table 2 footnote, in our words).
ASTERISK_NOTE = ("* marked by the authors: high specificity that is not acceptable in real life, "
                 "because of the class imbalance (the network rarely predicts COVID-19)")
#: Markers of the generated block of README.md (headline numbers).
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# --------------------------------------------------------------------------- display helpers
DASH = "\u2013"


def pct(value, sign=False) -> str:
    """Percent with one decimal, or a dash for a missing value.

    >>> pct(97.774), pct(-3.09, sign=True), pct(float("nan"))
    ('97.8', '−3.1', '–')
    """
    if value is None or pd.isna(value):
        return DASH
    text = f"{value:+.1f}" if sign else f"{value:.1f}"
    return text.replace("-", "\u2212")


def duration(seconds) -> str:
    """A time for people: seconds under two minutes, minutes under two hours, else hours.

    >>> duration(91.8), duration(1168), duration(7917)
    ('92 s', '19 min', '2.2 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def short_hash(sha, n=12) -> str:
    """A long hash shortened for a table cell, as git shortens commits: its first ``n`` characters.

    >>> short_hash("5b3032734b2c671a168233ff664d1646dd8e42324e9dbffe5b8bfc0b9ed0f971")
    '5b3032734b2c'
    """
    return sha[:n] if sha else DASH


def breakable(name: str) -> str:
    """A long file name that a table cell may wrap after '_' and '.' (HTML ``<wbr>``).

    >>> breakable("a_b.h5")
    'a_<wbr>b.<wbr>h5'
    """
    return re.sub(r"([_.])", r"\1<wbr>", name)


def _cell(value) -> str:
    """A table cell: a dash for a missing value, a blank for an empty string (a grouped row)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return DASH
    return (str(value) or "\u00a0").replace("\n", " ")


def md_table(df: pd.DataFrame, caption: str, name: str, notes=(), widths=None) -> str:
    """A MyST ``list-table`` (numbered "Table n.m" by Sphinx, referable as ``{numref}`name```)
    with the DataFrame's columns as one header row, and notes below it.

    Missing values become a dash; give a note that says what the dash means.
    """
    lines = [f":::{{list-table}} {caption}", f":name: {name}", ":header-rows: 1", ":class: xray-table"]
    if widths:
        lines.append(f":widths: {' '.join(str(w) for w in widths)}")
    lines.append("")
    for row in [list(df.columns)] + df.values.tolist():
        lines.append(f"* - {_cell(row[0])}")
        lines.extend(f"  - {_cell(v)}" for v in row[1:])
    lines.append(":::")
    if notes:
        lines.append("")
        lines.append(":::{div} table-notes")
        lines.extend(notes)
        lines.append(":::")
    return "\n".join(lines) + "\n"


def glance_display(t2: pd.DataFrame) -> pd.DataFrame:
    """The five-row table at a glance: per network its initialisation and 'ours / paper'
    for the four metrics (percent; the paper's as printed, with its asterisk)."""
    out = pd.DataFrame({"Network": t2["network"], "Initialisation": t2["initialisation"].replace("", NOT_RUN)})
    for k in METRICS:
        out[f"{METRIC_NAMES[k].capitalize()} (%)"] = [
            f"{pct(r[f'{k}_ours'])} / {r[f'{k}_paper']:.2f}"
            + (r["paper_asterisk"].replace("*", "\\*") if k == "specificity" else "") for _, r in t2.iterrows()]
    return out


#: Marks a value of the paper's Table 2 that its own table rules out (:func:`results.paper_checks`).
IMPOSSIBLE = "\u2020"


def table2_display(t2: pd.DataFrame, runs=None, qualified_by=None) -> pd.DataFrame:
    """Table 2 for reading, one row per network and metric: ours, its 95 % interval, the
    per-fold SD, the paper's value and the difference, in percent with one decimal.

    The paper's values carry its asterisk (specificity) and :data:`IMPOSSIBLE` where its own
    table rules them out. ``qualified_by``: backbone -> the findings (MyST links) that qualify
    its row, shown under the network's name. Unfinished runs show a dash and say how many
    folds are done.
    """
    from .results import paper_checks

    bad = {(r.backbone, r.metric) for r in paper_checks().itertuples() if not r.possible}
    rows = []
    for _, r in t2.iterrows():
        run = (runs or {}).get(r["backbone"])
        for i, k in enumerate(METRICS):
            done = not pd.isna(r[f"{k}_ours"])
            who = f"{r['network']}: {r['initialisation'] or NOT_RUN}" if i == 0 else ""
            if i == 0 and not done and run is not None:
                who += f" ({folds_label(run)})"
            if i == 1 and (qualified_by or {}).get(r["backbone"]):
                who = "See " + listing(qualified_by[r["backbone"]])
            mark = (r["paper_asterisk"].replace("*", "\\*") if k == "specificity" else "") \
                + (IMPOSSIBLE if (r["backbone"], k) in bad else "")
            rows.append({"Network: initialisation": who, "Metric": METRIC_NAMES[k],
                         "Ours (%)": pct(r[f"{k}_ours"]),
                         "95 % interval": f"{pct(r[f'{k}_ci_low'])}{DASH}{pct(r[f'{k}_ci_high'])}" if done else DASH,
                         "Fold SD (pp)": pct(r[f"{k}_fold_sd"]),
                         "Paper (%)": f"{r[f'{k}_paper']:.2f}{mark}",
                         "Difference (pp)": pct(r[f"{k}_diff_pp"], sign=True)})
    return pd.DataFrame(rows)


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for reading: one row per setting (paper, then ours), one column per network;
    a dash where a backbone has no run."""
    settings = [("weights", "Initial weights"), ("cutoff", "Layer cutoff"), ("classifier", "Classifier"),
                ("dropout", "Dropout"), ("optimizer", "Optimizer"), ("learning_rate", "Learning rate"),
                ("epochs", "Epochs"), ("batch_size", "Batch size"), ("input_size", "Input size (HxW)"),
                ("pooling", "Pooling"), ("folds", "Cross-validation folds")]
    rows = []
    for key, label in settings:
        for who in ("paper", "ours"):
            rows.append({"Setting": label if who == "paper" else "", "Source": who,
                         **{n: DASH if pd.isna(v) or v == "" else str(v)
                            for n, v in zip(t1["network"], t1[f"{key}_{who}"])}})
    return pd.DataFrame(rows)


def table3_display(t3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 for reading: per network ours, then the paper's TP, FP, TN, FN and total."""
    rows = []
    for _, r in t3.iterrows():
        for who in ("ours", "paper"):
            rows.append({"Network": r["network"] if who == "ours" else "", "Source": who,
                         **{k if k != "n" else "Images": DASH if pd.isna(r[f"{k}_{who}"]) else str(int(r[f"{k}_{who}"]))
                            for k in ("TP", "FP", "TN", "FN", "n")}})
    return pd.DataFrame(rows)


def comparison_display(cmp: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How each row moved, as two tables that fit a column: the initialisation of each
    generation, and 'earlier → now (change)' per metric."""
    inits = pd.DataFrame({"Network": cmp["network"], "Earlier initialisation": cmp["initialisation_earlier"],
                          "Current initialisation": cmp["initialisation_now"]})
    moved = pd.DataFrame({"Network": cmp["network"]})
    for k in METRICS:
        moved[f"{METRIC_NAMES[k].capitalize()} (%)"] = [
            f"{pct(r[f'{k}_earlier'])} \u2192 {pct(r[f'{k}_now'])} ({pct(r[f'{k}_change_pp'], sign=True)})"
            for _, r in cmp.iterrows()]
    return inits, moved


def headline(t2: pd.DataFrame, runs, folds=True, gaps=True) -> str:
    """Sentences on the state of the runs, generated from Table 2: how many are complete, what
    is still running, and the largest differences from the values the paper's own table allows
    (:func:`results.largest_gaps` with ``allowed_only``). ``folds=False`` leaves out the folds
    done of unfinished runs (for files that change only when a run completes); ``gaps=False``
    the differences (where :func:`verdict` states them)."""
    done = [r["network"] for _, r in t2.iterrows() if not pd.isna(r["accuracy_3class_ours"])]
    pending = [get_backbone(k).name + (f" ({folds_label(r)})" if folds else "")
               for k, r in runs.items() if not is_complete(r)]
    missing = [s.name for s in TABLE1 if s.key not in runs]
    out = [f"{len(done)} of {len(TABLE1)} backbones {'has' if len(done) == 1 else 'have'} a complete re-run"
           + (f" ({listing(done)})." if done else ".")]
    if pending:
        out.append(f"Still running: {listing(pending)}; these rows show only the paper's values until every "
                   "fold is done.")
    if missing:
        out.append(f"Not started: {listing(missing)}.")
    gaps = largest_gaps(t2, allowed_only=True) if gaps else []
    if gaps:
        out.append("Largest differences from the values the paper's table allows: " + "; ".join(
            f"{net} {metric} {pct(ours)} % against {pub:.2f} % ({pct(d, sign=True)} pp)"
            for net, metric, ours, pub, d in gaps) + ".")
    return " ".join(out)


def complete_phrase(n_complete: int) -> str:
    """How many of the five backbones have a complete run, as the start of a sentence.

    >>> complete_phrase(5), complete_phrase(3), complete_phrase(1)
    ('All five backbones have', '3 of the five backbones have', '1 of the five backbones has')
    """
    if n_complete == len(TABLE1):
        return "All five backbones have"
    return f"{n_complete} of the five backbones {'has' if n_complete == 1 else 'have'}"


def listing(items) -> str:
    """'a', 'a and b', 'a, b and c'.

    >>> listing(["a", "b", "c"])
    'a, b and c'
    """
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def readme_block(runs, artifacts="artifacts") -> str:
    """The README's headline block: the verdict (:func:`verdict`, Markdown links), the
    at-a-glance figure and the five-row table, between :data:`README_START` and :data:`README_END`."""
    t2 = table2(runs)
    table = glance_display(t2)
    head = "| " + " | ".join(table.columns) + " |\n| " + " | ".join("---" for _ in table.columns) + " |\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in table.values.tolist())
    said = "\n\n".join(verdict(runs, artifacts, style="md"))
    from .robustness import landing

    sentence, robust = landing(Path(artifacts).resolve().parent)
    rhead = "| " + " | ".join(robust.columns) + " |\n| " + " | ".join("---" for _ in robust.columns) + " |\n"
    rbody = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in robust.values.tolist())
    return (f"{README_START}\n{said}\n\n![Results at a glance](book/images/at_a_glance.png)\n\n"
            f"{headline(t2, runs, folds=False, gaps=False)}\n\n"
            f"{head}{body}\nOurs / the paper's value, in percent; ours pooled over the ten held-out folds of each complete run, "
            f"{DASH} where a run is not complete; * the authors' asterisk. Generated from `artifacts/` by `make results`.\n\n"
            f"**Chance and unstated choices** (book chapter *Robustness*): {sentence}\n\n{rhead}{rbody}\n"
            f"{README_END}")


def with_readme_block(text, block, path="README.md") -> str:
    """``text`` with its generated block replaced by ``block``."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block to hold the headline numbers")
    before, rest = text.split(README_START, 1)
    return before + block + rest.split(README_END, 1)[1]


def glance_stamp(runs) -> str:
    """What the at-a-glance figure was drawn from: the SHA-256 of Table 2's CSV text."""
    import hashlib

    return "table2.csv sha256 " + hashlib.sha256(to_csv(table2(runs)).encode()).hexdigest()


def write_glance(runs_root="artifacts/runs", path="book/images/at_a_glance.png") -> Path:
    """Draw the at-a-glance forest plot of the complete runs into a 200-dpi PNG stamped
    with :func:`glance_stamp` (so that ``--check`` can tell when it is stale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_forest

    runs = load_runs(runs_root)
    fig = plot_forest(table2(runs))  # no folds-done labels: the file changes only when a run completes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=200, metadata={"Software": None, "Description": glance_stamp(runs)})
    plt.close(fig)
    tmp.replace(path)
    return path


def write(runs_root="artifacts/runs", out="results", readme="README.md") -> list[Path]:
    """Write results/table{1,2,3}.csv and the README's headline block from the run artifacts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(runs_root)
    paths = []
    for name, text in render(runs).items():
        (out / name).write_text(text)
        paths.append(out / name)
    if readme and Path(readme).is_file():
        readme = Path(readme)
        readme.write_text(with_readme_block(readme.read_text(), readme_block(runs, Path(runs_root).parent), readme))
        paths.append(readme)
    return paths


def _first_difference(have, want) -> str:
    old, new = have.splitlines(), want.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    return (f"first at line {line + 1}: file {old[line] if line < len(old) else '<end>'!r} vs "
            f"artifacts {new[line] if line < len(new) else '<end>'!r}")


def check(runs_root="artifacts/runs", out="results", readme="README.md", glance=None) -> list[str]:
    """Problems that make results/*.csv, the README block or the glance figure differ from
    the artifacts (empty list when up to date). ``readme``/``glance`` None: not checked."""
    problems = []
    runs = load_runs(runs_root)
    for name, text in render(runs).items():
        path = Path(out) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        have = path.read_text()
        if have != text:
            problems.append(f"{path} differs from the artifacts in {runs_root} ({_first_difference(have, text)})")
    if readme and Path(readme).is_file():
        text = Path(readme).read_text()
        try:
            want = with_readme_block(text, readme_block(runs, Path(runs_root).parent), readme)
        except ValueError as e:
            problems.append(str(e))
        else:
            if want != text:
                problems.append(f"{readme}'s headline block differs from the artifacts ({_first_difference(text, want)})")
    if glance:
        from PIL import Image

        path = Path(glance)
        stamp = Image.open(path).text.get("Description") if path.is_file() else None
        if stamp != glance_stamp(runs):
            problems.append(f"{path} is missing or was drawn from other runs (run python -m xray_transfer.results "
                            f"--glance {path})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xray_transfer.results", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the CSV files and the README block")
    mode.add_argument("--check", action="store_true", help="fail if the CSV files or the README block are stale")
    mode.add_argument("--glance", metavar="PNG", help="draw the at-a-glance figure into PNG")
    ap.add_argument("--runs", default="artifacts/runs", help="run artifacts folder (default %(default)s)")
    ap.add_argument("--out", default="results", help="CSV folder (default %(default)s)")
    ap.add_argument("--readme", default="README.md", help="README holding the headline block (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.glance:
            print(f"wrote {write_glance(args.runs, args.glance)}")
            return 0
        if args.write:
            for p in write(args.runs, args.out, args.readme):
                print(f"wrote {p}")
            return 0
        problems = check(args.runs, args.out, args.readme)
    except (MixedRunsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if problems:
        print("results are stale:\n  " + "\n  ".join(problems)
              + "\nRun `make results` (python -m xray_transfer.results --write) and commit results/ and README.md.",
              file=sys.stderr)
        return 1
    print(f"{', '.join(TABLE_FILES)} in {args.out} and {args.readme} match the artifacts in {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- the verdict
#: Where each piece of evidence lives: a MyST label of the book, and a path for the README.
EVIDENCE = {
    "table2": ("results-table2", "notebooks/results.md"),
    "paper-audit": ("results-paper-audit", "notebooks/results.md"),
    "batchnorm": ("fair-batchnorm", "notebooks/fair_comparisons.md"),
    "lungs": ("tbl-audit-lungs", "artifacts/audit/lungs-hidden-in-frame-vgg19"),
    "adults": ("tbl-audit-confound", "artifacts/audit"),
}


NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


def link(key, text, style="myst") -> str:
    """A link to the evidence ``key`` of :data:`EVIDENCE`: a MyST ``{ref}`` for the book,
    a Markdown link for the README (``style="md"``)."""
    label, path = EVIDENCE[key]
    return f"{{ref}}`{text} <{label}>`" if style == "myst" else f"[{text}]({path})"


def possessive(name: str) -> str:
    """A network's name with "'s".

    >>> possessive("Inception v3")
    "Inception v3's"
    """
    return name + "'s"


def reproduced_cells(t2: pd.DataFrame) -> dict:
    """Per complete backbone the paper does not mark: which of Table 2's metrics ours matches or
    beats (the paper's value is not above our 95 % interval), and which it does not."""
    out = {}
    for _, r in t2.iterrows():
        if r["backbone"] in paper.ASTERISK or pd.isna(r["accuracy_3class_ours"]):
            continue
        met = [k for k in METRICS if r[f"{k}_ci_high"] >= r[f"{k}_paper"]]
        out[r["backbone"]] = (met, [k for k in METRICS if k not in met])
    return out


def verdict(runs, artifacts="artifacts", style="myst") -> list[str]:
    """The verdict of the book in a few sentences, each computed from the committed runs and linked
    to its evidence: what reproduces, what the paper's table cannot be, what the accuracy measures.

    ``style``: "myst" (book pages) or "md" (the README). Parts without evidence yet are left out.
    """
    from . import audit, compare
    from .results import paper_checks

    art, t2 = Path(artifacts), table2(runs)
    rows = t2.set_index("backbone")
    name = {b.key: b.name for b in TABLE1}
    out = []
    # what reproduces
    cells = reproduced_cells(t2)
    if cells:
        common = [k for k in METRICS if all(k in met for met, _ in cells.values())]
        said = (f"{listing([possessive(name[b]) for b in cells])} {listing([METRIC_NAMES[k] for k in common])} "
                f"match or beat the paper's" if common else "No figure of the paper's clean rows reproduces")
        misses = [f"{possessive(name[b])} {METRIC_NAMES[k]} does not ({pct(rows.loc[b, f'{k}_ours'])} % against "
                  f"{rows.loc[b, f'{k}_paper']:.2f} %)" for b, (_, miss) in cells.items() for k in miss]
        extra = [f"{possessive(name[b])} {METRIC_NAMES[k]}" for b, (met, _) in cells.items() for k in met
                 if k not in common]
        out.append(f"**What reproduces.** {said}" + (f", and so does {listing(extra)}" if extra else "")
                   + (f"; {listing(misses)}" if misses else "") + f" ({link('table2', 'Table 2', style)}).")
    failed = [b for b in paper.ASTERISK if is_complete(runs.get(b))]
    if failed:
        also = [b for b in failed if rows.loc[b, "sensitivity_ours"] < 50]
        text = (f"The paper's failed rows ({listing([name[b] for b in failed])}, asterisked by its authors) "
                + ("fail here too" if len(also) == len(failed) else
                   f"fail here for {listing([name[b] for b in also]) if also else 'none'}")
                + " under keras2, the paper's likely BatchNorm mode: COVID-19 sensitivity "
                + listing([pct(rows.loc[b, 'sensitivity_ours']) for b in failed]) + " %.")
        cured, persists, untried = [], [], []
        for b in also:
            modes = compare.batchnorm_table(b, art)
            keras2 = modes[modes["mode"] == "keras2"].iloc[0]
            others = modes[(modes["mode"] != "keras2") & modes["complete"]]
            low = [r for r in others.itertuples() if r.sensitivity < 50]
            if others.empty:
                untried.append(name[b])
            elif not low:
                cured.append(f"{possessive(name[b])} failure disappears ("
                             + ", ".join(f"{pct(r.sensitivity)} % in {r.mode}" for r in others.itertuples()) + ")")
            else:  # where each run was made is on the linked page; here only that it differs
                other = [k for k in ("backend", "device") if any(getattr(r, k) != keras2[k] for r in low)]
                persists.append(f"{possessive(name[b])} persists ("
                                + ", ".join(f"{pct(r.sensitivity)} % in {r.mode}" for r in low)
                                + (f", on another {listing(other)}" if other else "") + ")")
        untested = compare.collapse_untested(art, [b for b in compare.COLLAPSED if name[b] in untried]) \
            if untried else []
        if cured or persists:
            text += f" In the other modes, {listing(cured + persists)}"
            text += f"; {listing([possessive(n) for n in untried])} {'is' if len(untried) == 1 else 'are'} untested" \
                if untested else ""
        elif untested:
            text += f" For {listing(untried)} the cause of the collapse is untested"
        out.append(text + f" ({link('batchnorm', 'BatchNorm modes and backends', style)}).")
    # what the paper's table cannot be
    checks = paper_checks()
    caps = checks[(checks["metric"] == "accuracy_3class") & ~checks["possible"]]
    if not caps.empty:
        by_cap = {}
        for r in caps.itertuples():
            by_cap.setdefault(f"{r.bound:.1f}", []).append(f"{paper.TABLE2[r.backbone]['sensitivity']:.2f} %")
        printed = sorted({f"{v:.2f} %" for v in caps["paper"]})
        text = ("**What the paper's table cannot be.** A missed COVID-19 image is also a 3-class error, so a "
                "sensitivity of "
                + ", and ".join(f"{' or '.join(s)} caps {'3-class accuracy' if i == 0 else 'it'} at {c} %"
                                for i, (c, s) in enumerate(by_cap.items()))
                + f", yet the paper prints {listing(printed)} for "
                + (f"all {NUMBERS.get(len(caps), len(caps))}" if len(printed) == 1 else "them") + ".")
        acc2 = checks[(checks["metric"] == "accuracy_2class") & ~checks["possible"]]
        if not acc2.empty:
            worst = acc2.loc[(acc2["paper"] - acc2["bound"]).abs().idxmax()]
            text += (f" {possessive(name[worst['backbone']])} own sensitivity and specificity imply a 2-class "
                     f"accuracy of {worst['bound']:.2f} %, not {worst['paper']:.2f} %.")
        out.append(text[:-1] + f" ({link('paper-audit', 'paper audit', style)}).")
    # what the accuracy measures
    said = []
    hidden = {b: audit.run_summary(art / "audit" / f"lungs-hidden-in-frame-{b}")["pooled"] for b in ("vgg19", "mobilenet")}
    hidden = {b: h for b, h in hidden.items() if h}
    if hidden:
        b = max(hidden, key=lambda k: hidden[k]["accuracy_3class"])
        said.append(f"With the lungs hidden, {name[b]} still scores {pct(100 * hidden[b]['accuracy_3class'])} % "
                    f"3-class accuracy ({link('lungs', 'lungs hidden', style)}).")
    calls = audit.committed_adult_calls(art / "audit", art / "models")
    allcovid = [b for b, c in calls.items() if c["images"] and c["covid"] == c["images"]]
    if allcovid:
        n = {calls[b]["images"] for b in allcovid}
        said.append(f"{listing([name[b] for b in allcovid])} {'call all' if len(allcovid) > 1 else 'calls every one of'} "
                    f"{listing(sorted(map(str, n)))} adult X-rays without COVID-19 \"COVID-19\" "
                    f"({link('adults', 'adult X-rays', style)}).")
    if said:
        out.append("**What the accuracy measures.** " + " ".join(said)
                   + " These accuracies are not evidence of COVID-19 detection.")
    return out


def qualifiers(runs, artifacts="artifacts", style="myst") -> dict:
    """backbone -> links to the findings that qualify its Table 2 row, computed from the artifacts:
    the paper audit where the paper's row holds a value its own table rules out; the BatchNorm
    comparison where the backbone has frozen BatchNormalization layers and another mode was run
    or its row collapsed; the lungs-hidden run and the adult X-rays where they exist for it."""
    from . import audit, compare
    from .results import paper_checks

    art = Path(artifacts)
    checks = paper_checks()
    impossible = set(checks.loc[~checks["possible"], "backbone"])
    adults = audit.committed_adult_calls(art / "audit", art / "models")
    out = {}
    for spec in TABLE1:
        k, found = spec.key, []
        if k in impossible:
            found.append(link("paper-audit", "paper audit", style))
        modes = compare.batchnorm_table(k, art)
        if spec.frozen_batchnorm and (modes["folds"].iloc[1:].gt(0).any() or k in paper.ASTERISK):
            found.append(link("batchnorm", "BatchNorm mode", style))
        if (art / "audit" / f"lungs-hidden-in-frame-{k}" / "run.json").is_file():
            found.append(link("lungs", "lungs hidden", style))
        if k in adults and adults[k]["covid"] > adults[k]["images"] / 2:
            found.append(link("adults", "adult X-rays", style))
        out[k] = found
    return out


def context(row) -> str:
    """Where a comparison row's run was made (:func:`compare.row`), in a few words:
    'TensorFlow on CPU (2 cores), commit 74d9a0f'. Several values are joined with '+'; more
    than two commits (a run resumed over many sessions) are counted, not listed.

    >>> from types import SimpleNamespace as Row
    >>> context(Row(backend="jax", device="gpu: NVIDIA H200", commit="74d9a0f1; 8cb90f6a"))
    'JAX on NVIDIA H200, commit 74d9a0f + 8cb90f6'
    >>> five = "; ".join(c * 8 for c in "abcde")
    >>> context(Row(backend="tensorflow", device="cpu: AMD EPYC x2", commit=five))
    'TensorFlow on CPU (2 cores), commit aaaaaaa + 4 more (each fold records its own)'
    """
    def device(d):
        short = short_device(d)
        return short.replace("CPU, ", "CPU (") + ")" if short.startswith("CPU, ") else short

    def each(text, f):
        return " + ".join(f(v.strip()) for v in text.split(";") if v.strip()) if text else DASH

    def commits(text):
        shas = [v.strip() for v in (text or "").split(";") if v.strip()]
        if len(shas) > 2:
            return f"{short_commit(shas[0])} + {len(shas) - 1} more (each fold records its own)"
        return each(text, short_commit)

    return f"{each(row.backend, backend_name)} on {each(row.device, device)}, commit {commits(row.commit)}"


def short_commit(sha: str) -> str:
    """A commit as a table shows it: seven characters, '+dirty' kept."""
    return sha[:7] + ("+dirty" if sha.endswith("+dirty") else "")

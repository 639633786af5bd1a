"""``unlearn status`` and ``unlearn report``: reading an experiment's store, no Ray or MLflow.

Only argparse here; the readers are imported when a subcommand runs, so building the
parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys

from unlearn_core.errors import UserInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="progress of a running or finished experiment, from its store",
        description="References done / total; per method the sweep trials done, failed, "
                    "stopped by ASHA and pending, the replicates and the best objective so "
                    "far; elapsed time and an estimate of the time left. Read from the "
                    "results store alone (a folder or an s3:// ... URI), no Ray connection.",
        epilog="Example: unlearn status results/quickstart-digits-class3 --watch")
    p.add_argument("results_dir", help="an experiment's results folder or URI")
    p.add_argument("--watch", action="store_true",
                   help="redraw in place every --interval seconds until the run ends")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between redraws with --watch (default 2)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "report", help="one self-contained HTML report of one or several experiments",
        description="Write one HTML file (plots embedded, no network needed to open it): "
                    "the config and its command, the main and MIA tables (sortable), every "
                    "plot, per-method histograms of the F-score's per-example ε, and the "
                    "provenance (git commit, hashes, packages, hardware, stage wall times). "
                    "Several experiments (of one dataset) share one table first, with a "
                    "column per config field that differs.",
        epilog="Example: unlearn report results/quickstart-digits-class3  (writes "
               "report.html into it)  or  unlearn report results/a results/b --out ab.html")
    p.add_argument("results_dirs", nargs="+", metavar="results_dir",
                   help="an experiment's results folder or URI")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the HTML (default: report.html in the experiment's "
                        "folder for one experiment, ./report.html for several)")
    p.set_defaults(func=cmd_report)


def cmd_status(args: argparse.Namespace) -> int:
    from pipelines.status import show

    if args.interval <= 0:
        raise UserInputError(f"--interval {args.interval}: expected a positive number")
    return show(args.results_dir, watch=args.watch, interval=args.interval,
                as_json=args.json, out=sys.stdout)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.report import REPORT_FILE, build_report
    from pipelines.store import ResultsStore

    if args.out is None and len(args.results_dirs) == 1:
        store = ResultsStore.open(args.results_dirs[0])
        store.write_text(REPORT_FILE, build_report([store]))
        print(f"report {store.store.url(REPORT_FILE)}")
        return 0
    out = Path(args.out or REPORT_FILE)
    text = build_report(args.results_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"report {out.resolve()}")
    return 0

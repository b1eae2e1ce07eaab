"""`lalm-lens study CONFIG`: a whole study from a TOML/YAML file (see `lalm_lens.study.config`)."""

from __future__ import annotations

import argparse

from lalm_lens.cli.report import add_html_arg


def add_parser(sub, formatter) -> None:
    s = sub.add_parser("study", help="models x item sets x corruptions x modes from a TOML/YAML file; figures + report",
                       formatter_class=formatter)
    s.add_argument("config", help="the study file (.toml or .yaml); see examples/reference_study.toml")
    s.add_argument("--device", help="torch device for every model (default: this rank's GPU, else cpu)")
    add_html_arg(s)
    s.add_argument("--overwrite", action="store_true",
                   help="redo every run instead of resuming its records (needed after a setting changed)")
    s.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from lalm_lens.cli.args import check_writable
    from lalm_lens.study import read_study, run_study
    from lalm_lens.tracing import distributed

    study = read_study(args.config)  # the whole file is checked before any model loads
    check_writable(str(study.out))
    results = run_study(study, device=args.device, overwrite=args.overwrite)
    if distributed.from_env().main:
        counts = {k: (len(r.kept), len(r.records)) for k, r in results.items()}
        for key, (kept, total) in counts.items():
            print(f"{' · '.join(key)}: {kept} of {total} items kept")
        print(f"wrote {study.out / 'report.md'}, {study.out / 'summary.json'} and {study.out / 'figures'}/")
        if not args.no_html:
            from lalm_lens.pages.report import write_report

            print(f"wrote {write_report(study.out, progress=lambda _: None)}")
        if results and all(r.all_failed for r in results.values()):
            return 1
    return 0

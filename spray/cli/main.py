"""The ``spray`` command (also ``python -m spray``).

Exit codes (docs/errors.md): 0 ok / nothing flagged, 1 flagged classes (``check``,
``run --check``), 2 bad input, configuration or store — reported as one paragraph naming the key,
file or sample at fault, never a traceback —, 3 a run the gate cannot vouch for (not finished,
failed classes, stale summary), 4 an internal error (a bug: rerun with ``-v`` for details),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spray import __version__
from spray.errors import SprayError

INTERNAL_ERROR = 4


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _gate_options(p: argparse.ArgumentParser) -> None:
    """Options of the CI gate shared by ``check`` and ``run --check``."""
    p.add_argument("--junit", metavar="FILE",
                   help="write a JUnit XML file (one test case per class)")
    p.add_argument("--markdown", metavar="FILE",
                   help="write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--baseline", metavar="OLD_RUN",
                   help="accepted earlier run (folder or summary.json) of the same model code, "
                        "data, class list and pipeline: fail only on flags that are new or worse "
                        "than there")
    p.add_argument("--baseline-any", action="store_true",
                   help="compare with a baseline even when its fingerprints differ")
    p.add_argument("--baseline-margin", type=_finite_float, default=0.5, metavar="SCORE",
                   help="score rise that makes an accepted flag 'worse' (default 0.5)")
    p.add_argument("--fail-on", action="append", choices=["health"], default=[],
                   help="also fail (exit 1) when a class's relevance health crosses the limits "
                        "of the pipeline's 'health' section (NaN/Inf maps, conservation)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="judge the finished classes of a run that did not finish or has failed "
                        "classes, instead of failing with exit code 3")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spray", description="Spectral Relevance Analysis at dataset scale")
    p.add_argument("--version", action="version", version=f"spray {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log messages (-v: debug messages of spray)")
    p.add_argument("-q", "--log-quiet", action="count", default=0,
                   help="fewer log messages (-q: warnings and errors only)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compute relevance maps and the analysis for a config")
    r.add_argument("config", help="run config (YAML): data, model, attribution, classes, "
                                   "pipeline, cluster, output")
    r.add_argument("--scheduler", help="where the Dask graph runs: local (embedded cluster), "
                   "threads, slurm (dask-jobqueue) or a scheduler address tcp://HOST:PORT; "
                   "overrides cluster.scheduler")
    r.add_argument("--workers", type=int, metavar="N",
                   help="number of Dask workers to start (overrides cluster.n_workers)")
    r.add_argument("--output", help="run folder (overrides the config's 'output')")
    r.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--check", action="store_true",
                   help="gate the run like 'spray check': exit 1 when a class is flagged, 3 when "
                        "the run did not finish every class")
    _gate_options(r)
    v = sub.add_parser("validate", help="check a config and say what a run would do; writes "
                                        "nothing")
    v.add_argument("config", help="run config (YAML), as for 'spray run'")
    v.add_argument("--output", help="run folder (overrides the config's 'output')")
    d = sub.add_parser("demo", help="train a Clever-Hans model on digits and analyse it")
    d.add_argument("--output", default="runs/demo",
                   help="run folder: new, empty or an earlier demo's (default runs/demo)")
    d.add_argument("--model", choices=["cnn", "vit"], default="cnn",
                   help="the model trained on the spot: a small CNN (default) or a small "
                        "torchvision VisionTransformer explained with attn-lrp (about a minute)")
    d.add_argument("--scheduler", help="where the Dask graph runs (as for 'spray run')")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="rebuild RUN_DIR/report from the store")
    rep.add_argument("run_dir", help="the output folder of a 'spray run'")
    c = sub.add_parser("check", help="CI verdict: exit 1 when a class is flagged, 3 when the run "
                                     "cannot be vouched for")
    c.add_argument("run_dir", help="run folder, its report/ folder or its summary.json")
    _gate_options(c)
    ex = sub.add_parser("export", help="write a run in another tool's format")
    ex_sub = ex.add_subparsers(dest="format", required=True)
    vr = ex_sub.add_parser("virelay", help="a ViRelAy project (dataset, attribution and analysis "
                                            "HDF5, label map, project YAML)")
    vr.add_argument("run_dir", help="the output folder of a finished 'spray run'")
    vr.add_argument("out_dir", help="folder for the ViRelAy project (new or empty)")
    vr.add_argument("--name", help="project name shown in ViRelAy")
    vr.add_argument("--chunk-rows", type=_positive_int, default=256,
                    help="samples read and written at a time (bounds the memory)")
    vr.add_argument("--no-index", action="store_true",
                    help="attribution row = dataset index, no 'index' dataset (faster lookups in "
                         "ViRelAy for large runs)")
    return p


def _run(args) -> int:
    from spray.config.run_config import load_config

    cfg, base = load_config(args.config)  # config mistakes are reported before torch is loaded
    from spray.run.execute import failure_message, run

    if args.workers is not None:
        if args.workers < 1:
            raise SprayError(f"--workers must be at least 1, got {args.workers}")
        cfg.cluster.n_workers = args.workers
    gate = args.check or any((args.junit, args.markdown, args.baseline, args.fail_on))
    if gate and args.baseline:
        from spray.ci.check import load_summary

        load_summary(args.baseline, rebuild=False)  # a bad baseline fails before any work
    info = run(cfg, base, output=args.output, scheduler=args.scheduler,
               overwrite=args.overwrite, quiet=args.quiet, raise_failures=False)
    run_dir = Path(info["run_dir"])
    print(f"spray: report at {run_dir / 'report' / 'index.html'}")
    if gate:
        return _check_run(args, run_dir)
    _print_verdict(run_dir)
    if info["failed"]:
        print(f"spray: error: {failure_message(info)}", file=sys.stderr)
        return 3
    return 0


def _validate(args) -> int:
    from spray.config.run_config import load_config

    cfg, base = load_config(args.config)
    from spray.run.validate import validate_run

    for line in validate_run(cfg, base, output=args.output).lines():
        print(f"spray: {line}")
    return 0


def _print_verdict(run_dir: Path) -> None:
    from spray.ci.check import load_summary
    from spray.ci.outputs import verdict_lines

    summary = load_summary(run_dir, rebuild=False)
    for line in verdict_lines(summary, run_dir / "report"):
        print(f"spray: {line}")


def _check_run(args, run_dir: Path) -> int:
    from spray.ci.check import check

    return check(run_dir, junit_path=args.junit, markdown_path=args.markdown,
                 baseline=args.baseline, margin=args.baseline_margin,
                 allow_incomplete=args.allow_incomplete, baseline_any=args.baseline_any,
                 fail_on=tuple(args.fail_on))


def _demo_output(out: Path) -> bool:
    """May the demo write into ``out``? True to start over in an earlier demo's folder.

    Checked before anything is trained or written: a folder holding anything but an earlier
    demo's run (everything in it written by spray, with the demo's files) is refused.
    """
    from spray.errors import StoreError
    from spray.run.plan import _owned

    if out.exists() and not out.is_dir():
        raise StoreError(f"--output {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    owned = _owned(out)
    others = sorted(p.name for p in out.iterdir() if p.name not in owned)
    if "demo" not in owned or others:
        what = f"files spray did not write ({', '.join(others[:5])})" if others else \
            "a spray run that is not a demo"
        raise StoreError(f"--output {out} already holds {what}; the demo only writes into a new "
                         f"or empty folder or an earlier demo's. Choose another --output. "
                         f"Nothing was written.")
    return True


def _demo(args) -> int:
    from spray.cli.demo import prepare
    from spray.config.run_config import load_config
    from spray.run.execute import run
    from spray.store import OwnedFiles

    out = Path(args.output).resolve()
    again = _demo_output(out)
    if again:
        OwnedFiles(out).remove("demo")
    OwnedFiles(out).claim_folder("demo")
    cfg_path = prepare(out, model=args.model)
    cfg, base = load_config(cfg_path)
    info = run(cfg, base, output=str(out), scheduler=args.scheduler, overwrite=again,
               quiet=args.quiet)
    from spray.ci.check import load_summary

    summary = load_summary(out)
    flagged = ", ".join(str(e["name"]) for e in summary["classes"] if e["flagged"]) or "none"
    truth = out / "demo" / "ground_truth.json"
    planted = json.loads(truth.read_text())["planted_class"]
    print(f"spray demo: flagged classes: {flagged} (planted: class {planted}; ground truth in "
          f"{truth})")
    print(f"spray demo: report at {Path(info['run_dir']) / 'report' / 'index.html'}")
    return 0


def _report(args) -> int:
    from spray.errors import StoreError
    from spray.report.html import write_report
    from spray.store import OwnedFiles, adopt_legacy_run, open_store

    open_store(args.run_dir)  # a mistyped path is refused before anything is created
    adopt_legacy_run(args.run_dir)
    files = OwnedFiles(args.run_dir)
    if not files.owns("report"):
        raise StoreError(f"{Path(args.run_dir) / 'report'} was not written by spray; refusing "
                         f"to write the report into it")
    files.claim_folder("report")
    print(f"spray: report at {write_report(args.run_dir)}")
    return 0


def _export(args) -> int:
    from spray.export.virelay import export_virelay

    info = export_virelay(args.run_dir, args.out_dir, name=args.name, chunk_rows=args.chunk_rows,
                          with_index=not args.no_index)
    for c, why in info["skipped"].items():
        print(f"spray: note: class {c} not fully exported: {why}", file=sys.stderr)
    print(f"spray: ViRelAy project with {len(info['classes'])} analysed classes and "
          f"{info['attributions']} attributions at {info['project']} "
          f"(open it with: virelay {info['project']})")
    return 0


def _check(args) -> int:
    from spray.ci.check import check

    return check(args.run_dir, junit_path=args.junit, markdown_path=args.markdown,
                 baseline=args.baseline, margin=args.baseline_margin,
                 allow_incomplete=args.allow_incomplete, baseline_any=args.baseline_any,
                 fail_on=tuple(args.fail_on))


def _quiet_abandoned_writes() -> None:
    """After a reported error, concurrent store writes that failed too (e.g. the same full disk)
    leave futures whose exceptions nobody retrieved; asyncio would print each with a traceback
    when they are collected. The one clear message above is the report."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _configure_logging(verbose: int, quiet: int) -> None:
    """Messages of spray's library code go to stderr as ``spray: message`` lines."""
    import logging

    level = logging.INFO - 10 * (verbose - quiet)
    logger = logging.getLogger("spray")
    if not any(getattr(h, "spray_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("spray: %(message)s"))
        handler.spray_cli = True
        logger.addHandler(handler)
    logger.setLevel(min(max(level, logging.DEBUG), logging.ERROR))
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, args.log_quiet + 2 * bool(getattr(args, "quiet", False)))
    handler = {"run": _run, "validate": _validate, "demo": _demo, "report": _report, "check": _check,
               "export": _export}[args.command]
    try:
        return handler(args)
    except SprayError as err:
        _quiet_abandoned_writes()
        print(f"spray: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # full disk, read-only or vanished folder, permissions
        _quiet_abandoned_writes()
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"spray: error: cannot read or write a file{where}: {err.strerror or err}. "
              f"Finished chunks in the store are kept; free space or fix the folder and rerun.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (spray.run.signals.RunInterrupted)
        print("spray: interrupted; finished chunks are kept, rerun the same command to resume",
              file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except (MemoryError, RecursionError) as err:
        print(f"spray: error: out of memory or nesting too deep ({type(err).__name__}) while "
              f"running '{args.command}'; check the size of the inputs and the config",
              file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: one paragraph, the traceback with -v
        import logging
        import traceback

        if args.verbose:
            traceback.print_exc()
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        print(f"spray: internal error in '{args.command}': {type(err).__name__}: {err}. This is "
              f"a bug in spray; rerun with -v for the details and report them.", file=sys.stderr)
        return INTERNAL_ERROR

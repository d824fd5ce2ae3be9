"""`python -m keras_reg bench`: evidence and cost benchmarks of the catalogued techniques.

    python -m keras_reg bench [--quick] [--only NAME ...] [--no-sweep | --sweep-only] [--data-dir DIR] [--seeds N]

The experiments live in the repository's `benchmarks/` folder (`benchmarks/registry.py` maps catalogue technique
names to dedicated experiment specs; `benchmarks/sweep.py` and the `sweep_*.py` groups give every other technique
an arm in one common small network); every catalogue row appears in the report's coverage table. A whole run
(both parts) takes about 80 minutes of training plus the timing on 2 cores; `--no-sweep` and `--sweep-only` split
it into two sittings of under an hour each (`--merge` keeps the other part's results). Results:
`OUT/results/{evidence,cost,train_steps,torch_sam}.json`, `OUT/benchmarks.md` and `OUT/bench_*.png`. Default OUT
is `docs/` for a full run and `out/bench-quick/` for `--quick`.
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_benchmarks():
    if not (_ROOT / "benchmarks" / "registry.py").is_file():
        raise SystemExit(f"The benchmark harness lives in the source checkout ({_ROOT / 'benchmarks'} not found); "
                         "run `python -m keras_reg bench` from a clone of the repository.")
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from benchmarks import common, registry, report, runner

    return common, registry, report, runner


def _train_steps():
    _import_benchmarks()
    from benchmarks import bench_train_steps

    return bench_train_steps


def build_parser():
    p = argparse.ArgumentParser(prog="python -m keras_reg bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small subsets, 2 epochs, first setting only (minutes)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="technique names, component classes or experiment keys")
    p.add_argument("--data-dir", default=os.environ.get("KERAS_REG_DATA", "/work/shared/data"))
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; 1 with --quick)")
    p.add_argument("--out", default=None, help="output folder (default docs/, or out/bench-quick/ with --quick)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--no-sweep", action="store_true",
                      help="only the dedicated experiments (about 45 min of evidence on 2 cores)")
    part.add_argument("--sweep-only", action="store_true",
                      help="only the sweep groups (benchmarks/sweep.py; about 36 min of evidence on 2 cores)")
    p.add_argument("--no-evidence", action="store_true", help="skip the training experiments")
    p.add_argument("--no-cost", action="store_true", help="skip the timing")
    p.add_argument("--no-train-steps", action="store_true", help="skip the training-step technique table")
    p.add_argument("--no-memory", action="store_true", help="skip the train-step memory probes (default with --quick)")
    p.add_argument("--memory", action="store_true", help="memory probes for the experiments' cost arms too")
    p.add_argument("--peers", action="store_true", help="run the PyTorch SAM peer (slow: minutes per epoch here)")
    p.add_argument("--no-peers", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    p.add_argument("--report-only", action="store_true", help="regenerate benchmarks.md and plots from the JSON")
    # Overrides, mainly for the smoke test.
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-test", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cost-repeats", type=int, default=None, help="interleaved timing rounds (5; 2 with --quick)")
    p.add_argument("--cost-steps", type=int, default=None, help="steps per round (10; 3 with --quick)")
    p.add_argument("--note", default="", help="a note on the run's conditions, printed in the report")
    p.add_argument("--merge", action="store_true",
                   help="keep the other experiments of OUT/results/*.json and replace only those run now")
    return p


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _matches(exp, names):
    keys = {n.lower() for n in names}
    own = {exp.key.lower(), *(t.lower() for t in exp.techniques)}
    return bool(keys & own)


def select(registry, catalogue_rows, only=None, part=None):
    """(experiments to run, coverage rows): the coverage lists every catalogue row. `part` "dedicated" or "sweep"
    keeps one half of a full run (two sittings of under an hour each)."""
    coverage, chosen = [], []
    only_keys = None
    if only:
        only_keys = set()
        for name in only:
            found = [t.name for t in _find(catalogue_rows, name)]
            only_keys |= {name, *found}
    for row in catalogue_rows:
        exps = registry.for_technique(row.name)
        not_placed = registry.not_placed.get(row.name)
        if not exps and not_placed:
            text = f"not in the sweep: {not_placed}"
        elif not exps:
            text = "no experiment yet" if row.status == "implemented" else f"no experiment ({row.status})"
        else:
            text = ", ".join(f"`{e.key}`" for e in exps)
        coverage.append({"name": row.name, "kind": row.kind, "status": row.status, "component": row.component,
                         "experiment": text})
    for exp in registry.REGISTRY.values():
        if part is not None and exp.sweep != (part == "sweep"):
            continue
        if only_keys is None or _matches(exp, only_keys):
            chosen.append(exp)
    return chosen, coverage


def _find(rows, name):
    key = name.lower()
    return [t for t in rows if t.name.lower() == key or t.component.rsplit(".", 1)[-1].lower() == key]


def _merge_base(old, chosen, command, coverage):
    """The previous evidence, to which the experiments run now are put back (`--merge`)."""
    old["coverage"] = coverage
    old.setdefault("reruns", []).append({"command": command, "started": _now(), "keys": [e.key for e in chosen]})
    return old


def _put(experiments, result, order):
    """`experiments` with `result` in place of the entry of the same key, in registry order."""
    rest = [e for e in experiments if e["key"] != result["key"]] + [result]
    rank = {key: i for i, key in enumerate(order)}
    return sorted(rest, key=lambda e: rank.get(e["key"], len(rank)))


def _apply_overrides(registry, args):
    import dataclasses

    if args.epochs is None and args.n_train is None and args.n_test is None:
        return
    for key, exp in list(registry.REGISTRY.items()):
        settings = tuple(s.scaled(n_train=args.n_train, n_test=args.n_test) for s in exp.settings)
        changes = {"settings": settings}
        if args.epochs is not None:
            changes.update(epochs=args.epochs, quick_epochs=args.epochs)
        registry.REGISTRY[key] = dataclasses.replace(exp, **changes)


def main(argv=None):
    args = build_parser().parse_args(argv)
    common, registry, report, runner = _import_benchmarks()
    out = pathlib.Path(args.out or (_ROOT / ("out/bench-quick" if args.quick else "docs")))
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    command = "python -m keras_reg bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        path = results / "evidence.json"
        if path.is_file():  # claims re-judged by the current rules in the registry
            path.write_text(json.dumps(runner.reevaluate_claims(json.loads(path.read_text())), indent=1))
        print(report.write_report(str(out), command))
        return 0
    common.configure_tensorflow(args.threads)
    saved = dict(registry.REGISTRY)
    try:
        _apply_overrides(registry, args)
        return _run(args, common, registry, report, runner, out, results, command)
    finally:
        registry.REGISTRY.clear()
        registry.REGISTRY.update(saved)  # the overrides do not outlive the call


def _run(args, common, registry, report, runner, out, results, command):
    from keras_reg import catalogue

    seeds = args.seeds or (1 if args.quick else 3)
    args.cost_repeats = args.cost_repeats or (2 if args.quick else 5)
    args.cost_steps = args.cost_steps or (3 if args.quick else 10)
    log = lambda msg: print(msg, flush=True)
    opts = runner.Options(data_dir=args.data_dir, seeds=seeds, quick=args.quick, log=log)
    part = "sweep" if args.sweep_only else "dedicated" if args.no_sweep else None
    chosen, coverage = select(registry, catalogue.techniques(), args.only, part)
    log(f"bench: {len(chosen)} experiment(s): {[e.key for e in chosen]}; seeds={seeds}; quick={args.quick}")
    machine = common.machine_info()

    if not args.no_evidence:
        evidence = {"schema_version": runner.SCHEMA_VERSION, "command": command, "machine": machine,
                    "started": _now(), "load_1min_start": common.load_average(), "seeds": seeds,
                    "quick": args.quick, "data_dir": args.data_dir, "coverage": coverage, "experiments": [],
                    "note": args.note}
        if args.merge and (results / "evidence.json").is_file():
            evidence = _merge_base(json.loads((results / "evidence.json").read_text()), chosen, command, coverage)
        for exp in chosen:
            reason = registry.missing(exp.requires)
            if reason:
                log(f"[{exp.key}] skipped: {reason}")
                evidence["experiments"].append({"key": exp.key, "techniques": list(exp.techniques),
                                                "claim": exp.claim, "skipped": reason})
                continue
            log(f"[{exp.key}] running ({_now()}, load {common.load_average()})")
            result = runner.run_experiment(exp, opts)
            if args.merge:
                result["rerun"] = {"command": command, "finished": _now(), "load_1min_end": common.load_average()}
            evidence["experiments"] = _put(evidence["experiments"], result, [e.key for e in registry.REGISTRY.values()])
            if not args.merge:
                evidence["finished"], evidence["load_1min_end"] = _now(), common.load_average()
            (results / "evidence.json").write_text(json.dumps(evidence, indent=1))  # after each experiment
            report.write_report(str(out), command)
        if not args.merge:
            evidence["finished"], evidence["load_1min_end"] = _now(), common.load_average()
        (results / "evidence.json").write_text(json.dumps(evidence, indent=1))

    if args.peers and any(e.key == "flatness" for e in chosen) and not registry.missing(
            ("keras_reg.training.SharpnessAwareMinimization",)):
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise ImportError("torch is not installed (pip install torch)")
            log(f"[torch SAM peer] running ({_now()})")
            peer = runner.torch_sam_peer(opts, str(results))
        except ImportError as error:
            peer = {"skipped": str(error)}
        peer.update(command=command, finished=_now())
        (results / "torch_sam.json").write_text(json.dumps(peer, indent=1))

    if not args.no_cost and not args.no_train_steps:
        steps_lib = _train_steps()
        only = None if not args.only else {t for e in chosen for t in e.techniques} | set(args.only)
        if steps_lib.names_for(only):
            log(f"[train steps] timing ({_now()}, load {common.load_average()})")
            steps = steps_lib.run(args.cost_repeats, args.cost_steps, only, jit=False,
                                  with_memory=not args.no_memory and not args.quick, log=log)
            steps.update(command=command)
            (results / "train_steps.json").write_text(json.dumps(steps, indent=1))

    if not args.no_cost:
        cost = {"schema_version": runner.SCHEMA_VERSION, "command": command, "machine": machine, "started": _now(),
                "load_1min_start": common.load_average(), "note": args.note,
                "repeats": args.cost_repeats, "steps": args.cost_steps, "memory_steps": args.cost_steps,
                "experiments": {}}
        if args.merge and (results / "cost.json").is_file():
            cost = json.loads((results / "cost.json").read_text())
            cost.setdefault("reruns", []).append({"command": command, "started": _now(), "note": args.note,
                                                  "keys": [e.key for e in chosen]})
            cost["note"] = args.note or cost.get("note", "")  # the latest sitting's conditions
        for exp in chosen:
            reason = registry.missing(exp.requires)
            if reason or not exp.cost_arms:
                cost["experiments"][exp.key] = {"skipped": reason or "no cost arms"}
                continue
            log(f"[{exp.key}] timing {exp.cost_arms} (load {common.load_average()})")
            entry = runner.time_arms(exp, exp.cost_arms, opts, repeats=args.cost_repeats, steps=args.cost_steps)
            if args.memory:
                entry["memory"] = runner.memory_probes(exp.key, list(entry["arms"]), opts, steps=args.cost_steps)
            cost["experiments"][exp.key] = entry
            cost["finished"], cost["load_1min_end"] = _now(), common.load_average()
            (results / "cost.json").write_text(json.dumps(cost, indent=1))
        (results / "cost.json").write_text(json.dumps(cost, indent=1))

    path = report.write_report(str(out), command)
    log(f"bench: wrote {path} and {results}/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

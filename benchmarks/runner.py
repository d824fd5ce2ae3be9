"""Runs the registry's experiments (evidence), the interleaved timing (cost) and the memory probes."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from benchmarks import metrics as metrics_lib
from benchmarks import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_VERSION = 2


@dataclasses.dataclass
class Options:
    data_dir: str = "/work/shared/data"
    seeds: int = 3
    quick: bool = False
    log: object = print

    def epochs(self, exp):
        return exp.quick_epochs if self.quick else exp.epochs

    def settings(self, exp):
        if not self.quick:
            return list(exp.settings)
        return [s.scaled(n_train=min(s.n_train, 512), n_test=min(s.n_test, 500)) for s in
                exp.settings[: exp.quick_settings]]


def _stats(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values), "values": [float(v) for v in values]}


def context(exp, arm, setting, seed, opts, data=None):
    """The Context an arm's builders see."""
    data = data if data is not None else common.load_setting(setting, opts.data_dir)
    epochs = arm.epochs if arm.epochs is not None else opts.epochs(exp)
    if arm.epochs and opts.quick:
        epochs = min(epochs, exp.quick_epochs)
    return registry.Context(data=data, seed=seed, setting=setting, exp=exp, data_dir=opts.data_dir, epochs=epochs,
                            batch_size=arm.batch_size or exp.batch_size)


def train_xy(arm, ctx):
    """What an arm fits on: its `inputs(ctx, x)` and `labels(ctx, y)` of the training data (the data's own by
    default). An arm may train on a subset (both hooks then return it)."""
    data = ctx.data
    y = arm.labels(ctx, data.y_train) if arm.labels else data.y_train
    x = arm.inputs(ctx, data.x_train) if arm.inputs else data.x_train
    return x, y


def run_arm(exp, arm, setting, seed, opts):
    """Trains one arm on one setting with one seed; returns its metrics, curve and timing."""
    import keras

    keras.utils.set_random_seed(seed)
    ctx = context(exp, arm, setting, seed, opts)
    data = ctx.data
    model = arm.build(ctx)
    x, y = train_xy(arm, ctx)
    callbacks = arm.callbacks(ctx, model) if arm.callbacks else []
    history, seconds = common.train(model, x, y, data.x_test, data.y_test, ctx.epochs, ctx.batch_size,
                                    seed, callbacks=callbacks, validate=arm.validate)
    values = metrics_lib.measure(exp.metrics, model, common.inner_model(model), ctx, history)
    return {
        "metrics": values,
        "curve": {"val_accuracy": [float(v) for v in history.get("val_accuracy", [])],
                  "loss": [float(v) for v in history.get("loss", [])]},
        "epoch_seconds": [round(s, 3) for s in seconds],
        "data_source": data.source,
    }


def evaluate_claim(claim, summary, settings):
    """Verdict of one claim from the per-setting, per-arm summaries."""
    rows = []
    for index in claim.settings:
        if index >= len(settings):
            continue
        arms = summary[index]["arms"]
        if claim.arm not in arms or claim.baseline not in arms:
            continue
        t = arms[claim.arm]["metrics"][claim.metric]
        b = arms[claim.baseline]["metrics"][claim.metric]
        if t["mean"] is None or b["mean"] is None:
            continue
        sign = 1 if claim.higher else -1
        effect = t["mean"] - b["mean"]
        band = (t["std"] or 0) + (b["std"] or 0)
        tolerance = getattr(claim, "tolerance", None)
        if tolerance is not None:
            verdict = "holds" if sign * effect >= -tolerance else (
                f"does not hold (worse by {abs(effect):.4g}, more than the tolerance {tolerance:g})")
        elif claim.not_worse:
            verdict = "holds" if sign * effect >= -band else "does not hold (worse beyond the std bands)"
        elif sign * effect > band:
            verdict = "holds"
        elif sign * effect > 0:
            verdict = "not significant (same direction, std bands overlap)"
        elif -sign * effect > band:
            verdict = "does not hold (the opposite is outside the std bands)"
        else:
            verdict = "does not hold (no difference outside the std bands, opposite direction)"
        monotone = None
        if claim.monotone:
            means = [arms[a]["metrics"][claim.metric]["mean"] for a in claim.monotone if a in arms]
            steps = np.diff(means) * sign
            monotone = bool(np.all(steps >= 0))
            if verdict == "holds" and not monotone:
                verdict = "does not hold (not monotone)"
        rows.append({
            "claim": claim.text, "metric": claim.metric, "setting": settings[index].label(),
            "technique_arm": claim.arm, "baseline_arm": claim.baseline,
            "technique": t, "baseline": b, "effect": effect, "band": band, "monotone": monotone,
            "tolerance": tolerance, "rule": _rule(claim), "verdict": verdict,
        })
    return rows


def _rule(claim):
    if getattr(claim, "tolerance", None) is not None:
        return f"within {claim.tolerance:g}"
    if claim.not_worse:
        return "not worse beyond the bands"
    return "beyond the bands" + (", monotone" if claim.monotone else "")


def run_experiment(exp, opts):
    settings = opts.settings(exp)
    result = {"key": exp.key, "techniques": list(exp.techniques), "claim": exp.claim,
              "paper_setting": exp.paper_setting, "epochs": opts.epochs(exp), "batch_size": exp.batch_size,
              "seeds": list(range(opts.seeds)), "model": exp.net_desc, "optimizer": exp.opt_desc, "note": exp.note,
              "sweep": exp.sweep, "arm_techniques": {a.name: a.technique for a in exp.arms if a.technique},
              "metric_doc": {m: metrics_lib.METRICS[m].doc for m in exp.metrics}, "settings": [], "claims": [],
              "skipped_arms": {}, "arm_overrides": {
                  a.name: {k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size)) if v is not None}
                  for a in exp.arms if a.epochs is not None or a.batch_size is not None}}
    started = time.time()
    for setting in settings:
        entry = {"setting": dataclasses.asdict(setting), "label": setting.label(), "arms": {}}
        for arm in exp.arms:
            reason = registry.missing(arm.requires)
            if reason:
                result["skipped_arms"][arm.name] = reason
                continue
            runs = []
            for seed in range(opts.seeds):
                t0 = time.time()
                try:
                    runs.append(run_arm(exp, arm, setting, seed, opts))
                except Exception as error:  # one failing arm must not sink the run: record it
                    result["skipped_arms"][arm.name] = f"failed: {type(error).__name__}: {error}"
                    opts.log(f"  [{exp.key}] {arm.name} failed: {error!r}")
                    break
                opts.log(f"  [{exp.key}] {setting.label()} | {arm.name} | seed {seed}: "
                         f"{json.dumps({k: round(v, 4) for k, v in runs[-1]['metrics'].items()})} "
                         f"({time.time() - t0:.0f}s, load {common.load_average()})")
            if not runs:
                continue
            entry["arms"][arm.name] = {
                "peer": arm.peer,
                "metrics": {m: _stats([r["metrics"][m] for r in runs]) for m in exp.metrics},
                "curves": [r["curve"] for r in runs],
                "median_epoch_seconds": float(np.median([s for r in runs for s in r["epoch_seconds"][1:]] or [0])),
            }
            entry["data_source"] = runs[0]["data_source"]
        result["settings"].append(entry)
    for claim in exp.claims:
        result["claims"].extend(evaluate_claim(claim, result["settings"], settings))
    result["wall_seconds"] = round(time.time() - started, 1)
    return result


# -- cost -----------------------------------------------------------------------------------------------------


def _dataset(x, y, batch_size):
    import tensorflow as tf

    y = tuple(y) if isinstance(y, list) else y  # several outputs' targets, not one stacked tensor
    n = len(tf.nest.flatten(y)[0])
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=0).batch(batch_size).repeat()


def time_arms(exp, arm_names, opts, repeats=5, steps=20):
    """Interleaved timing in one process: warm-up epoch per arm, then `repeats` rounds of
    (baseline, technique, ...) each fitting `steps` steps on `ds.repeat()`; median seconds per step."""
    import keras

    setting = opts.settings(exp)[0]
    data = common.load_setting(setting, opts.data_dir)
    models, datasets, callbacks, skipped = {}, {}, {}, {}
    for name in arm_names:
        arm = exp.arm(name)
        reason = registry.missing(arm.requires)
        if reason:
            skipped[name] = reason
            continue
        keras.utils.set_random_seed(0)
        ctx = context(exp, arm, setting, 0, opts, data)
        models[name] = arm.build(ctx)
        datasets[name] = _dataset(*train_xy(arm, ctx), ctx.batch_size)
        callbacks[name] = arm.callbacks(ctx, models[name]) if arm.callbacks else []
        warmup = max(1, -(-len(data.x_train) // ctx.batch_size))  # one epoch of the subset: traces and warms up
        models[name].fit(datasets[name], epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False,
                         callbacks=callbacks[name])
    load_start = common.load_average()
    per_step = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            model.fit(datasets[name], epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
                      callbacks=callbacks[name])
            per_step[name].append((time.perf_counter() - t0) / steps)
    load_end = common.load_average()
    base = arm_names[0]
    out = {"setting": setting.label(), "sweep": exp.sweep, "batch_size": exp.batch_size, "steps_per_repeat": steps,
           "repeats": repeats, "load_1min_start": load_start, "load_1min_end": load_end, "arms": {},
           "skipped_arms": skipped}
    for name, times in per_step.items():
        ratios = [t / b for t, b in zip(times, per_step[base])] if base in per_step else []
        out["arms"][name] = {
            "median_step_ms": 1000 * float(np.median(times)),
            "step_ms": [round(1000 * t, 2) for t in times],
            "ratio_to_baseline": float(np.median(times) / np.median(per_step[base])) if base in per_step else None,
            "paired_ratio_median": float(np.median(ratios)) if ratios else None,
            "peer": exp.arm(name).peer,
        }
    return out


def memory_probes(exp_key, arm_names, opts, steps=20, workers=2):
    """`memory_probe` of each arm, `workers` fresh processes at a time (RSS is per process, so concurrent probes do
    not disturb each other; run them outside the timing)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda name: memory_probe(exp_key, name, opts, steps), arm_names)
        return dict(zip(arm_names, results))


def memory_probe(exp_key, arm_name, opts, steps=20):
    """Peak RSS increase (MiB) of building and training one arm, in a fresh process (RSS only grows within one)."""
    code = (
        "import sys, json; sys.path.insert(0, %r);"
        "from benchmarks.runner import _memory_probe_child; _memory_probe_child(%r, %r, %r, %r, %d)"
        % (ROOT, exp_key, arm_name, opts.data_dir, opts.quick, steps)
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("MEMPROBE "):
            return json.loads(line[len("MEMPROBE "):])
    return {"error": (proc.stderr or proc.stdout)[-500:]}


def _memory_probe_child(exp_key, arm_name, data_dir, quick, steps):
    common.configure_tensorflow(2)
    import keras

    opts = Options(data_dir=data_dir, quick=quick)
    exp = registry.REGISTRY[exp_key]
    arm = exp.arm(arm_name)
    setting = opts.settings(exp)[0]
    data = common.load_setting(setting, data_dir)
    ds_probe = _dataset(data.x_train, data.y_train, exp.batch_size)  # TF runtime and tf.data set up before the probe
    next(iter(ds_probe))
    keras.utils.set_random_seed(0)
    probe = common.PeakRSS()
    with probe:
        ctx = context(exp, arm, setting, 0, opts, data)
        model = arm.build(ctx)
        model.fit(_dataset(*train_xy(arm, ctx), ctx.batch_size), epochs=1, steps_per_epoch=steps, verbose=0,
                  shuffle=False,
                  callbacks=arm.callbacks(ctx, model) if arm.callbacks else [])
    print("MEMPROBE " + json.dumps({"rss_before_mib": probe.start_rss / 2**20,
                                    "peak_rss_delta_mib": (probe.peak - probe.start_rss) / 2**20}))


# -- torch SAM peer --------------------------------------------------------------------------------------------


def torch_sam_peer(opts, out_dir):
    """The PyTorch SAM loop on the SAM experiment's data, model, optimizer and budget, in a subprocess."""
    exp = registry.REGISTRY["flatness"]
    setting = opts.settings(exp)[0]
    data = common.load_setting(setting, opts.data_dir)
    path = os.path.join(out_dir, "_torch_sam_data.npz")
    np.savez(path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "torch_sam.py"), path, "--epochs",
           str(opts.epochs(exp)), "--seeds", str(opts.seeds), "--batch-size", str(exp.batch_size),
           "--filters", ",".join(map(str, registry.FILTERS)), "--lr", "0.05", "--momentum", "0.9", "--rho", "0.05"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    finally:
        os.remove(path)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("TORCHSAM "):
            result = json.loads(line[len("TORCHSAM "):])
            result["setting"] = setting.label()
            return result
    return {"skipped": (proc.stderr or proc.stdout)[-800:]}


def reevaluate_claims(evidence):
    """Recomputes every experiment's claims from its stored per-arm summaries with the current registry rules."""
    for exp in evidence.get("experiments", []):
        spec = registry.REGISTRY.get(exp.get("key"))
        if spec is None or exp.get("skipped"):
            continue
        settings = [common.Setting(**s["setting"]) for s in exp["settings"]]
        exp["note"] = spec.note  # the spec's text is the source of the notes
        exp["sweep"] = spec.sweep
        exp["arm_techniques"] = {a.name: a.technique for a in spec.arms if a.technique}
        exp["claims"] = [row for claim in spec.claims for row in evaluate_claim(claim, exp["settings"], settings)]
    return evidence

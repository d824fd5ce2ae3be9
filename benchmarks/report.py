"""Markdown tables and PNG plots from the result JSON files (re-runnable alone: `bench --report-only`)."""

import json
import os

import numpy as np

from benchmarks.metrics import METRICS

# -- formatting -----------------------------------------------------------------------------------------------


def _pm(stats, digits=4, scale=1):
    if not stats or stats.get("mean") is None:
        return "—"
    mean, std = stats["mean"] * scale, stats["std"] * scale
    if scale == 1 and 0 < max(abs(mean), std) < 10 ** (1 - digits):  # too small for fixed point: scientific
        return f"{mean:.2e} ± {std:.1e}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt(metric, stats):
    m = METRICS.get(metric)
    if m is not None and m.pct:
        return _pm(stats, 2, 100) + (" %" if stats and stats.get("mean") is not None else "")
    return _pm(stats, 4)


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header, rows):
    """A Markdown table; cells are escaped."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _budget(exp, arm=None):
    over = exp.get("arm_overrides", {}).get(arm, {}) if arm else {}
    epochs = over.get("epochs", exp["epochs"])
    return f"{epochs} epochs" + (f", batch {over['batch_size']}" if "batch_size" in over else "")


def _verdict(c):
    return f"**{c['verdict']}**"


# -- evidence -------------------------------------------------------------------------------------------------


def is_sweep(exp):
    """A sweep group (benchmarks/sweep.py) rather than a dedicated experiment."""
    return bool(exp.get("sweep"))


def verdict_counts(evidence, sweep=None):
    """Verdict counts over the experiments (only the sweep groups, or only the others, when `sweep` is given)."""
    counts = {"holds": 0, "not significant": 0, "does not hold": 0}
    for exp in evidence.get("experiments", []):
        if sweep is not None and is_sweep(exp) != sweep:
            continue
        for c in exp.get("claims", []):
            key = next((k for k in counts if c["verdict"].startswith(k)), None)
            if key:
                counts[key] += 1
    return counts


def evidence_table(evidence):
    """The dedicated experiments' claims."""
    rows = []
    for exp in evidence["experiments"]:
        if is_sweep(exp):
            continue
        if exp.get("skipped"):
            rows.append([", ".join(exp["techniques"]), exp["claim"], "—", "—", "—", "—", f"skipped: {exp['skipped']}"])
            continue
        for c in exp["claims"]:
            rows.append([
                f"{c['technique_arm']} (`{exp['key']}`)", c["claim"],
                f"{c['setting']}, {_budget(exp)}, {len(exp['seeds'])} seeds", c["metric"],
                f"{c['baseline_arm']}: {_fmt(c['metric'], c['baseline'])}", _fmt(c["metric"], c["technique"]),
                _verdict(c)])
    return table(["technique (experiment)", "claim", "setting", "metric", "baseline (mean ± std)",
                  "technique (mean ± std)", "verdict"], rows)


def sweep_table(evidence):
    """The sweep groups' claims, one block of rows per technique (its accuracy claim, then its target claims)."""
    rows = []
    for exp in evidence["experiments"]:
        if not is_sweep(exp):
            continue
        if exp.get("skipped"):
            rows.append([", ".join(exp["techniques"]), "—", exp["claim"], "—", "—", "—", f"skipped: {exp['skipped']}"])
            continue
        techniques = exp.get("arm_techniques", {})
        for c in exp["claims"]:
            arm = c["technique_arm"]
            rows.append([f"{techniques.get(arm, arm)} (`{exp['key']}`)", arm, c["claim"], c["metric"],
                         _fmt(c["metric"], c["baseline"]), _fmt(c["metric"], c["technique"]), _verdict(c)])
        for name, why in exp.get("skipped_arms", {}).items():
            rows.append([f"{techniques.get(name, name)} (`{exp['key']}`)", name, "—", "—", "—", "—",
                         f"arm not run: {why}"])
    return table(["technique (group)", "arm", "claim", "metric", "plain (mean ± std)", "technique (mean ± std)",
                  "verdict"], rows)


def sweep_setting(evidence):
    """One line on the sweep groups' common setting (from the first group), or None without sweep groups."""
    exp = next((e for e in evidence.get("experiments", []) if is_sweep(e) and not e.get("skipped")), None)
    if exp is None:
        return None
    label = exp["settings"][0]["label"] if exp["settings"] else "?"
    return (f"{label}, {exp['model']}, {exp.get('optimizer', '')}, batch {exp['batch_size']}, {exp['epochs']} "
            f"epochs, seeds {exp['seeds']} (a group may override the network or data for techniques that need "
            "another setting: see its note under *Details per experiment*)")


def detail_tables(evidence):
    out = []
    for exp in evidence["experiments"]:
        if exp.get("skipped"):
            continue
        out.append(f"### {', '.join(exp['techniques'])} (`{exp['key']}`)\n")
        out.append(f"Claim: {exp['claim']}  \nPaper setting: {exp['paper_setting']}.  \n"
                   f"Here: {exp['model']}, {exp.get('optimizer', '')}, batch {exp['batch_size']}, {exp['epochs']} "
                   f"epochs, seeds {exp['seeds']}; wall time {exp.get('wall_seconds', 0):.0f} s.\n")
        for name, over in exp.get("arm_overrides", {}).items():
            out.append(f"- arm *{name}*: " + ", ".join(f"{k} {v}" for k, v in over.items()))
        if exp.get("note"):
            out.append(f"\nNote: {exp['note']}\n")
        for m, doc in exp["metric_doc"].items():
            out.append(f"- `{m}`: {doc}")
        out.append("")
        metrics = list(exp["metric_doc"])
        for s in exp["settings"]:
            out.append(f"**{s['label']}** (data: `{s.get('data_source', '?')}`)\n")
            rows = []
            for name, arm in s["arms"].items():
                peer = f" (peer: {arm['peer']})" if arm.get("peer") else ""
                rows.append([name + peer] + [_fmt(m, arm["metrics"][m]) for m in metrics]
                            + [f"{arm['median_epoch_seconds']:.1f}"])
            out += [table(["arm"] + metrics + ["s/epoch"], rows), ""]
        for name, why in exp.get("skipped_arms", {}).items():
            out.append(f"- arm *{name}* skipped: {why}")
        out.append("")
    return "\n".join(out)


def coverage_table(evidence):
    return table(["technique", "kind", "status", "experiment"],
                 [[r["name"], r["kind"], r["status"], r["experiment"]] for r in evidence["coverage"]])


# -- cost -----------------------------------------------------------------------------------------------------


def cost_table(cost):
    rows = []
    for key, entry in cost.get("experiments", {}).items():
        if entry.get("skipped"):
            rows.append([key, "—", "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        for name, arm in entry["arms"].items():
            mem = entry.get("memory", {}).get(name, {})
            peer = f" (peer: {arm['peer']})" if arm.get("peer") else ""
            rows.append([key, name + peer, f"{arm['median_step_ms']:.1f}", f"{arm['ratio_to_baseline']:.2f}",
                         f"{arm['paired_ratio_median']:.2f}",
                         f"{mem['peak_rss_delta_mib']:.0f}" if "peak_rss_delta_mib" in mem else "—",
                         f"{entry['load_1min_start']} → {entry['load_1min_end']}"])
    return table(["experiment", "arm", "median step (ms)", "ratio to baseline", "paired ratio (median)",
                  "peak RSS Δ (MiB)", "load 1-min start → end"], rows)


def train_steps_section(steps):
    from benchmarks import bench_train_steps

    condition = ("Measured under load (other jobs shared these cores)." if bench_train_steps.under_load(steps)
                 else "Measured on a quiet machine (no other jobs on these cores).")
    return [bench_train_steps.describe(steps), "", condition, "", bench_train_steps.markdown_table(steps)]


def torch_table(peer):
    if not peer or peer.get("skipped"):
        return f"Not run in this run ({peer.get('skipped') if peer else 'use --peers'})."
    lines = [f"PyTorch {peer['torch']} ({peer['threads']} threads), {peer.get('setting', '')}, {peer['epochs']} epochs, "
             f"batch {peer['batch_size']}, SGD lr {peer['lr']} momentum {peer['momentum']}, rho {peer['rho']} "
             f"(run: `{peer.get('command', '?')}`, finished {peer.get('finished', '?')}).\n"]
    rows = [[f"torch {name}", _fmt("test_acc", arm["test_acc"]), f"{arm['median_step_ms']:.1f}",
             f"{arm['ratio_to_baseline']:.2f}"] for name, arm in peer["arms"].items()]
    return "\n".join(lines) + table(["arm", "test acc (mean ± std)", "median step (ms)", "ratio to its SGD"], rows)


# -- plots ----------------------------------------------------------------------------------------------------


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _grid(plt, n, width=4.0, height=3.2, cols=4):
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _save(fig, plt, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(evidence, path):
    """Test accuracy per epoch (mean ± std over seeds) of every arm, first setting of every experiment."""
    plt = _plt()
    exps = [e for e in evidence.get("experiments", []) if not e.get("skipped") and e["settings"] and any(
        arm["curves"] and arm["curves"][0]["val_accuracy"] for arm in e["settings"][0]["arms"].values())]
    if plt is None or not exps:
        return None
    fig, axes = _grid(plt, len(exps))
    for ax, exp in zip(axes, exps):
        s = exp["settings"][0]
        for name, arm in s["arms"].items():
            curves = np.array([c["val_accuracy"] for c in arm["curves"] if c["val_accuracy"]])
            if curves.size == 0 or curves.ndim != 2:
                continue
            mean, std = curves.mean(0), curves.std(0)
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(epochs, mean, label=name[:30])
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{exp['key']}: {s['label']}"[:70], fontsize=7)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("test accuracy", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    return _save(fig, plt, path)


def _noise_series(exp):
    """{arm: [(noise, stats)]} when the experiment's settings differ in label-noise rate, else None."""
    groups = {}
    for s in exp["settings"]:
        st = s["setting"]
        groups.setdefault((st["dataset"], st["n_train"], st.get("transform", "")), []).append(s)
    settings = max(groups.values(), key=len) if groups else []
    if len({s["setting"]["noise"] for s in settings}) < 2:
        return None
    series = {}
    for s in settings:
        for name, arm in s["arms"].items():
            series.setdefault(name, []).append((s["setting"]["noise"], arm["metrics"]["test_acc"]))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in series.items()}


def plot_noise(evidence, path):
    """Final test accuracy against the label-noise rate, for every experiment with several noise rates."""
    plt = _plt()
    exps = [(e, _noise_series(e)) for e in evidence.get("experiments", []) if not e.get("skipped")]
    exps = [(e, s) for e, s in exps if s]
    if plt is None or not exps:
        return None
    fig, axes = _grid(plt, len(exps), 5.5, 4.0, 2)
    for ax, (exp, series) in zip(axes, exps):
        for name, pts in series.items():
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts],
                        marker="o", capsize=3, label=name)
        st = exp["settings"][0]["setting"]
        ax.set_xlabel(f"{st['noise_kind']} label-noise rate")
        ax.set_ylabel("final test accuracy")
        ax.set_title(f"{exp['key']}: {st['dataset']}, {st['n_train']} train, {exp['epochs']} epochs", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_lorth(evidence, path):
    plt = _plt()
    exp = next((e for e in evidence.get("experiments", []) if e["key"] == "lorth" and not e.get("skipped")), None)
    if plt is None or exp is None or not exp["settings"]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, arm in exp["settings"][0]["arms"].items():
        e, a = arm["metrics"]["orth_error"], arm["metrics"]["test_acc"]
        ax.errorbar(e["mean"], a["mean"], xerr=e["std"], yerr=a["std"], marker="s" if arm.get("peer") else "o",
                    capsize=3, label=name[:34])
    ax.set_xscale("log")
    ax.set_xlabel("orthogonality error max|sigma-1| (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Lorth: orthogonality vs accuracy", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, plt, path)


def plot_sweep(evidence, path):
    """Test-accuracy difference to the plain arm (mean, with the technique's std) of every sweep arm; the grey band
    is the plain arm's std (of the arm's group); red bars failed the "keeps the accuracy" claim."""
    plt = _plt()
    bars = []
    for exp in evidence.get("experiments", []):
        if not is_sweep(exp) or exp.get("skipped") or not exp["settings"]:
            continue
        arms = exp["settings"][0]["arms"]
        plain = arms.get("plain", {}).get("metrics", {}).get("test_acc", {})
        failed = {c["technique_arm"] for c in exp["claims"] if c["metric"] == "test_acc" and
                  c["verdict"].startswith("does not hold")}
        for name, arm in arms.items():
            t = arm["metrics"].get("test_acc", {})
            if name == "plain" or t.get("mean") is None or plain.get("mean") is None:
                continue
            bars.append((f"{exp['key'][6:]}: {name}"[:52], 100 * (t["mean"] - plain["mean"]), 100 * t["std"],
                         100 * plain["std"], name in failed))
    if plt is None or not bars:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.18 * len(bars) + 1.2))
    ax.barh(range(len(bars)), [b[1] for b in bars], xerr=[b[2] for b in bars], capsize=1.5,
            color=["tab:red" if b[4] else "tab:blue" for b in bars])
    ax.barh(range(len(bars)), [2 * b[3] for b in bars], left=[-b[3] for b in bars], height=0.9, color="0.85",
            zorder=0)  # each group's plain ± std
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([b[0] for b in bars], fontsize=6)
    ax.set_xlabel("test accuracy - plain test accuracy (points; mean ± std over seeds; grey: the plain arm's ± std)",
                  fontsize=7)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_title("sweep: every technique in its slot of the same small CNN", fontsize=8)
    return _save(fig, plt, path)


def plot_overhead(cost, steps, path):
    """Step-time ratios: every training-step technique (train_steps.json) and the experiments' cost arms."""
    plt = _plt()
    panels = []
    if steps and steps.get("results"):
        res = steps["results"].get("no_jit", {})
        panels.append(("training-step techniques vs their plain step (no jit)",
                       [(n, a["ratio_median"], a["ratio_min"], a["ratio_max"]) for n, a in res.items()
                        if not n.startswith("_") and not n.startswith("plain")]))
    for title, sweep in (("experiment arms vs the experiment's baseline", False),
                         ("sweep arms vs the plain sweep network", True)):
        bars = [(f"{k}: {n}"[:44], a["ratio_to_baseline"], None, None) for k, e in cost.get("experiments", {}).items()
                if not e.get("skipped") and bool(e.get("sweep")) == sweep for n, a in list(e["arms"].items())[1:]]
        if bars:
            panels.append((title, bars))
    if plt is None or not panels:
        return None
    height = sum(0.28 * len(b) + 0.9 for _, b in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(b) + 2 for _, b in panels]})
    for ax, (title, bars) in zip(axes[:, 0], panels):
        values = [b[1] for b in bars]
        err = None
        if all(b[2] is not None for b in bars):
            err = np.array([[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]]).clip(min=0)
        ax.barh(range(len(bars)), values, xerr=err, capsize=2)
        ax.set_yticks(range(len(bars)))
        ax.set_yticklabels([b[0] for b in bars], fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step time / baseline step time (median of interleaved rounds)", fontsize=7)
    return _save(fig, plt, path)


# -- the page -------------------------------------------------------------------------------------------------


def _load(res, name):
    path = os.path.join(res, name)
    return json.load(open(path)) if os.path.exists(path) else {}


def _cost_condition(cost):
    """The banner on the experiment-arm timings: under load when the 1-minute load around any experiment's timing
    exceeded the cores + 0.5 (the run's own loads when it timed nothing)."""
    import os

    entries = [e for e in cost.get("experiments", {}).values() if not e.get("skipped")] or [cost]
    load = max(max(e.get("load_1min_start") or 0.0, e.get("load_1min_end") or 0.0) for e in entries)
    if load > (os.cpu_count() or 2) + 0.5:
        return ("**The experiment-arm timings (cost table) were measured under load**: these cores were shared with "
                "other jobs (see the load averages), so absolute times are inflated and noisy and the ratios are "
                "only good to about ±10-20%; baseline and technique are timed *interleaved* in one process so both "
                "see the same load. The training-step table states its own conditions. Accuracy numbers are not "
                "affected by the load.")
    return ("The experiment-arm timings (cost table) were measured on a quiet machine; the training-step table "
            "states its own conditions.")


def write_report(out_dir, command):
    res = os.path.join(out_dir, "results")
    evidence, cost = _load(res, "evidence.json"), _load(res, "cost.json")
    steps, peer = _load(res, "train_steps.json"), _load(res, "torch_sam.json")
    join = lambda name: os.path.join(out_dir, name)
    plots = {
        "curves": plot_curves(evidence, join("bench_curves.png")) if evidence else None,
        "noise": plot_noise(evidence, join("bench_noise.png")) if evidence else None,
        "lorth": plot_lorth(evidence, join("bench_lorth_tradeoff.png")) if evidence else None,
        "overhead": plot_overhead(cost, steps, join("bench_overhead.png")) if (cost or steps) else None,
        "sweep": plot_sweep(evidence, join("bench_sweep.png")) if evidence else None,
    }
    m = evidence.get("machine") or cost.get("machine") or {}
    counts = verdict_counts(evidence) if evidence else {}
    md = ["# Benchmarks: evidence and cost", "",
          "Generated by `python -m keras_reg bench` (`keras_reg/bench.py`, experiment registry in "
          "`benchmarks/registry.py`, metrics in `benchmarks/metrics.py`); do not edit by hand. Raw numbers: "
          "`results/*.json` beside this file.", "",
          f"Evidence run: `{evidence.get('command', command)}` ({evidence.get('started', '?')} → "
          f"{evidence.get('finished', '?')} UTC; 1-minute load average {evidence.get('load_1min_start')} at the start "
          f"and {evidence.get('load_1min_end')} at the end)  ",
          *[f"Re-run and merged (`--merge`): {', '.join(f'`{k}`' for k in r['keys'])} by `{r['command']}` "
            f"(started {r['started']} UTC)  " for r in evidence.get("reruns", [])],
          f"Cost run: `{cost.get('command', '?')}` ({cost.get('started', '?')} → {cost.get('finished', '?')} UTC)  ",
          *[f"Cost re-run and merged (`--merge`): {len(r['keys'])} experiment(s) by `{r['command']}` (started "
            f"{r['started']} UTC)  " for r in cost.get("reruns", [])],
          f"Machine: {m.get('cpu_model')} ({m.get('nproc')} cores visible, {m.get('memory_gib')} GiB), Python "
          f"{m.get('python')}, TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, TF limited to "
          f"{m.get('intra_op_threads')} intra-op threads.", "",
          _cost_condition(cost), "",
          "Verdict rule: *holds* when the mean difference is in the claimed direction and larger than the sum of "
          "the two standard deviations over seeds (the bands do not overlap); *not significant* when it points "
          "the right way but the bands overlap; *does not hold* otherwise. Trade-off claims (*not worse*) hold "
          "unless the technique is worse beyond the bands; *within t* claims hold when the technique's mean is at "
          "most t below the baseline's. This is small-scale evidence (small networks, data subsets, few epochs), not "
          "a reproduction of the papers' tables: *does not hold* means *not at this scale and budget*.", ""]
    if counts:
        dedicated, sweep = verdict_counts(evidence, sweep=False), verdict_counts(evidence, sweep=True)
        n_sweep = sum(is_sweep(e) for e in evidence["experiments"])
        md += [f"Summary: {sum(counts.values())} claims - dedicated experiments: {sum(dedicated.values())} claims over "
               f"{len(evidence['experiments']) - n_sweep} experiments, {dedicated['holds']} hold, "
               f"{dedicated['not significant']} not significant, {dedicated['does not hold']} do not hold; sweep: "
               f"{sum(sweep.values())} claims over {n_sweep} groups, {sweep['holds']} hold, {sweep['not significant']} "
               f"not significant, {sweep['does not hold']} do not hold.", ""]
    md += ["## Evidence", "", "### Dedicated experiments (each paper's headline claim, in a setting built for it)", "",
           evidence_table(evidence) if evidence else "not run", ""]
    if plots["noise"]:
        md += ["![accuracy against label-noise rate](bench_noise.png)", ""]
    if plots["curves"]:
        md += ["![test-accuracy curves](bench_curves.png)", ""]
    if plots["lorth"]:
        md += ["![Lorth trade-off](bench_lorth_tradeoff.png)", ""]
    if sweep_setting(evidence):
        md += ["### Sweep: every other technique in its slot of one small network (`benchmarks/sweep.py`)", "",
               "Each technique is placed where its paper puts it (a kernel regularizer or constraint on a layer, a "
               "layer in the network, the loss, a training-step technique, a callback, an optimizer, an initializer) "
               "and trained against the same network without it. Every technique is claimed to keep the plain "
               "network's test accuracy (the trade-off rule), and, where it has one, to move the quantity it acts "
               "on. This checks that each technique works and what it costs at one small scale; it is not the "
               f"paper's experiment. Setting: {sweep_setting(evidence)}.", "", sweep_table(evidence), ""]
    if plots["sweep"]:
        md += ["![sweep accuracy differences](bench_sweep.png)", ""]
    if evidence.get("note"):
        md += [f"Note on this run: {evidence['note']}", ""]
    md += ["## Cost", ""]
    if cost.get("note"):
        md += [f"Note on this run: {cost['note']}", ""]
    if steps:
        md += ["### Training-step techniques (every `StepTechnique`)", ""] + train_steps_section(steps) + [""]
    if cost.get("experiments"):
        md += ["### Experiment arms", "",
               f"Interleaved in one process: warm-up epoch per arm, then {cost.get('repeats')} rounds of "
               f"(baseline, technique, ...) × {cost.get('steps')} steps on `ds.repeat()` with `steps_per_epoch`; "
               "median seconds per step, on each experiment's own network and data. Peak RSS Δ (only with "
               "`--memory`): resident-set growth while building the model and training, each arm in a fresh process "
               "(`tracemalloc` misses TensorFlow's allocations and `tf.config.experimental.get_memory_info('CPU:0')` "
               "raises 'Allocator stats not available' on CPU).", "", cost_table(cost), ""]
    if plots["overhead"]:
        md += ["![overhead](bench_overhead.png)", ""]
    if not (steps or cost):
        md += ["not run", ""]
    md += ["## Peers", "",
           "Keras' `OrthogonalRegularizer` (on the kernel reshaped to (k·k·C, M)), deel-lip's `LorthRegularizer` and "
           "Keras' `SpectralNormalization` are arms of the Lorth experiment (accuracy and orthogonality error) and "
           "of its cost rows.", "",
           "### PyTorch SAM on the same work (`--peers`)", "", torch_table(peer), ""]
    md += ["## The harness", "",
           "`python -m keras_reg bench [--quick] [--only NAME ...] [--data-dir DIR] [--seeds N] [--out DIR]` "
           "(implementation `keras_reg/bench.py:main(argv)`). It walks `keras_reg.catalogue.techniques()`; every "
           "row named by a spec in `benchmarks/registry.py` gets that experiment; the rows without a dedicated "
           "experiment are sweep entries (`benchmarks/sweep.py` and the `benchmarks/sweep_*.py` groups: one arm each in "
           "a common small network, `sweep.NOT_PLACED` lists the few that have no slot and why), and any row left is "
           "listed under *Coverage* as \"no experiment yet\". A spec (`spec(...)`, a few lines) names the catalogue "
           "row(s), the paper's claim and setting, the data settings (loaded through `keras_reg.data.load`, label "
           "noise through `keras_reg.data.add_label_noise`), the network, optimizer and budget, the arms (`arm(...)`; "
           "the first is the plain baseline: same network, data, optimizer, epochs and seeds), the metrics "
           "(`benchmarks/metrics.py`) and the claims (`better`, `not_worse`, `within`). Components are looked up by "
           "dotted path when an arm is built, so a spec whose class is absent from a checkout is skipped with the "
           "reason instead of breaking the run. Seeds 0..N-1 change initialisation and batch order; the data subset "
           "and the label noise are fixed. The cost stage times every training-step technique "
           "(`benchmarks/bench_train_steps.py`) and the `cost_arms` of the experiments.", ""]
    if evidence:
        md += ["## Details per experiment", "", detail_tables(evidence), "",
               "## Coverage of the catalogue", "", coverage_table(evidence), ""]
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as f:
        f.write("\n".join(md))
    return os.path.join(out_dir, "benchmarks.md")

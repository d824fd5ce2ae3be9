"""Smoke test of the benchmark harness (`keras_reg.bench.main`, the registry, the metrics and the report) on tiny
generated data: the JSON schema and the rendered tables. No timing is asserted (timing belongs in benchmarks/, and
these cores are shared)."""

import json
import os

import numpy as np
import pytest

from keras_reg import bench
from keras_reg import catalogue


def _tiny_npz(folder, name, n_train=64, n_test=32):
    rng = np.random.default_rng(0)
    np.savez(folder / f"{name}.npz",
             x_train=rng.integers(0, 256, (n_train, 28, 28), dtype="uint8"),
             y_train=rng.integers(0, 10, n_train).astype("uint8"),
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype="uint8"),
             y_test=rng.integers(0, 10, n_test).astype("uint8"))


@pytest.fixture(scope="module")
def harness():
    return bench._import_benchmarks()


def test_registry_covers_catalogue_and_skips_missing_classes(harness):
    common, registry, report, runner = harness
    chosen, coverage = bench.select(registry, catalogue.techniques())
    assert {row["name"] for row in coverage} == {t.name for t in catalogue.techniques()}
    for row in coverage:
        assert row["experiment"]  # an experiment key, or "no experiment yet"
    assert "NoSuchLayer" in registry.missing(("keras_reg.layers.NoSuchLayer",))
    assert registry.missing(("keras_reg.layers.QuantizationNoise",)) is None


def test_every_spec_is_consistent(harness):
    """Technique names are catalogue rows, claims name existing arms and metrics, required classes import."""
    common, registry, report, runner = harness
    from benchmarks.metrics import METRICS

    names = {t.name for t in catalogue.techniques()}
    for exp in registry.REGISTRY.values():
        assert set(exp.techniques) <= names, exp.key
        arms = {a.name for a in exp.arms}
        assert len(arms) == len(exp.arms), exp.key
        assert set(exp.metrics) <= set(METRICS), exp.key
        assert set(exp.cost_arms) <= arms, exp.key
        for claim in exp.claims:
            assert {claim.arm, claim.baseline} <= arms and claim.metric in exp.metrics, (exp.key, claim.text)
            assert claim.higher == METRICS[claim.metric].higher
            assert max(claim.settings) < len(exp.settings)
        assert registry.missing(exp.requires) is None, exp.key
    covered = {t for exp in registry.REGISTRY.values() for t in exp.techniques}
    for required in ("ELR", "LDR-KL", "ALDR-KL", "GAM", "Finite-difference GR", "SR-STE", "PS-KD", "z-loss",
                     "StableMax cross-entropy", "Spectral decoupling", "mixup", "DropBlock", "Stochastic Depth",
                     "ScheduledDropPath", "GhostBatchNorm", "PerpGrad (⊥Grad)", "AdEMAMix", "Grokfast (EMA)", "ELLE",
                     "IBP certified training", "Co-teaching", "Random-teacher distillation", "WiSE-FT",
                     "QAT-4bit (weights + activations)"):
        assert required in covered, required


def test_every_implemented_technique_has_an_experiment_or_a_reason(harness):
    """A dedicated experiment or a sweep entry for every implemented row; the rows the sweep cannot place are
    listed in `benchmarks.sweep.NOT_PLACED` with the reason, and only those."""
    common, registry, report, runner = harness
    from benchmarks import sweep

    covered = {t for exp in registry.REGISTRY.values() for t in exp.techniques}
    implemented = {t.name for t in catalogue.techniques() if t.status == "implemented"}
    assert implemented - covered == set(sweep.NOT_PLACED)
    assert all(len(why) > 20 for why in sweep.NOT_PLACED.values())
    _, coverage = bench.select(registry, catalogue.techniques())
    texts = {row["name"]: row["experiment"] for row in coverage}
    for name, why in sweep.NOT_PLACED.items():
        assert texts[name] == f"not in the sweep: {why}"
    assert not any(text == "no experiment yet" for text in texts.values())
    sweep_part, _ = bench.select(registry, catalogue.techniques(), part="sweep")
    dedicated, _ = bench.select(registry, catalogue.techniques(), part="dedicated")
    assert sweep_part and all(e.sweep for e in sweep_part) and dedicated and not any(e.sweep for e in dedicated)
    assert len(sweep_part) + len(dedicated) == len(registry.REGISTRY)


def test_sweep_network_hooks(harness):
    common, registry, report, runner = harness
    import keras

    from benchmarks import sweep

    class Data:
        input_shape, num_classes = (28, 28, 1), 10

    ctx = registry.Context(data=Data(), seed=0, setting=sweep.SWEEP)
    net = sweep.sweep_cnn(ctx, dense=lambda name: {"use_bias": name != "hidden"},
                          after_hidden=lambda: keras.layers.Dropout(0.5, name="extra"),
                          activation=lambda name: keras.layers.Activation("tanh", name=f"tanh_{name}"))
    assert [layer.name for layer in net.layers if layer.name.startswith(("conv", "hidden", "logits", "extra"))] == [
        "conv0", "conv1", "hidden", "extra", "logits"]
    assert not net.get_layer("hidden").use_bias and net.get_layer("logits").use_bias
    assert net.get_layer("tanh_hidden") is not None and net.output.shape == (None, 10)
    assert sweep.hidden_kernel(net).shape == (7 * 7 * sweep.FILTERS[1], sweep.HIDDEN)


def test_spec_builder_makes_arms_and_claims(harness):
    common, registry, report, runner = harness
    a = registry.arm("ELR", per_sample=True, loss=registry.ce())
    assert a.labels is not None and a.validate
    c = registry.within("test_acc", "x", "y", 0.01, "t")
    assert c.higher and c.tolerance == 0.01
    assert not registry.better("ece", "x", "y", "t").higher


def test_claim_verdicts(harness):
    common, registry, report, runner = harness
    stats = lambda m, s: {"mean": m, "std": s, "n": 3, "values": []}
    summary = [{"arms": {"a": {"metrics": {"m": stats(0.9, 0.01)}}, "b": {"metrics": {"m": stats(0.8, 0.01)}}}}]
    setting = [common.Setting("mnist", 10)]
    verdict = lambda claim: runner.evaluate_claim(claim, summary, setting)[0]["verdict"]
    assert verdict(registry.Claim("m", "a", "b", True, "t")) == "holds"
    assert verdict(registry.Claim("m", "b", "a", True, "t")).startswith("does not hold (the opposite")
    assert verdict(registry.Claim("m", "b", "a", True, "t", tolerance=0.2)) == "holds"
    assert verdict(registry.Claim("m", "b", "a", True, "t", tolerance=0.05)).startswith("does not hold (worse by")
    assert verdict(registry.Claim("m", "b", "a", True, "t", not_worse=True)).startswith("does not hold (worse")
    summary[0]["arms"]["b"]["metrics"]["m"] = stats(0.89, 0.01)
    assert verdict(registry.Claim("m", "a", "b", True, "t")).startswith("not significant")
    assert verdict(registry.Claim("m", "b", "a", True, "t", not_worse=True)) == "holds"


def test_setting_transforms(harness, tmp_path):
    common, registry, report, runner = harness
    _tiny_npz(tmp_path, "mnist")
    plain = common.load_setting(common.Setting("mnist", 40, n_test=20), str(tmp_path))
    rotated = common.load_setting(common.Setting("mnist", 40, n_test=20, transform="rotate30"), str(tmp_path))
    assert rotated.x_train.shape == plain.x_train.shape
    assert not np.allclose(rotated.x_train, plain.x_train)
    np.testing.assert_allclose(rotated.extra_test["shift"][0], plain.x_test)
    patched = common.load_setting(common.Setting("mnist", 40, n_test=20, transform="spurious_patch"), str(tmp_path))
    x_spur, y_spur = patched.extra_test["spurious"]
    for i, label in enumerate(y_spur[:5]):  # the label's patch cell is white
        r, c = divmod(int(label), 5)
        assert np.all(x_spur[i, 1 + 4 * r: 4 + 4 * r, 2 + 5 * c: 5 + 5 * c] == 1.0)


def test_bench_main_end_to_end(tmp_path, harness):
    data = tmp_path / "data"
    data.mkdir()
    _tiny_npz(data, "fashion_mnist")
    _tiny_npz(data, "mnist")
    out = tmp_path / "out"
    code = bench.main(["--quick", "--only", "QuantNoise (activations)", "PS-KD", "ibp", "sweep_constraints",
                       "--data-dir", str(data),
                       "--out", str(out), "--seeds", "2", "--epochs", "1", "--n-train", "64", "--n-test", "32",
                       "--cost-repeats", "1", "--cost-steps", "2", "--no-memory"])
    assert code == 0
    evidence = json.loads((out / "results" / "evidence.json").read_text())
    assert evidence["schema_version"] == 2
    assert {"machine", "coverage", "experiments", "load_1min_start", "load_1min_end"} <= set(evidence)
    by_key = {e["key"]: e for e in evidence["experiments"]}
    assert set(by_key) == {"quant_noise_activations", "pskd", "ibp", "sweep_constraints"}
    arms = by_key["quant_noise_activations"]["settings"][0]["arms"]
    assert set(arms) == {"no noise", "2-bit activation noise"}
    for arm in arms.values():
        acc = arm["metrics"]["test_acc"]
        assert acc["n"] == 2 and 0.0 <= acc["mean"] <= 1.0 and acc["std"] >= 0.0
        assert len(arm["curves"]) == 2 and len(arm["curves"][0]["val_accuracy"]) == 1
    pskd = by_key["pskd"]["settings"][0]["arms"]["PS-KD alpha_T=0.8"]["metrics"]
    assert 0.0 <= pskd["ece"]["mean"] <= 1.0
    ibp = by_key["ibp"]["settings"][0]["arms"]
    assert 0.0 <= ibp["IBP eps=0.1"]["metrics"]["verified_acc"]["mean"] <= 1.0
    for exp in by_key.values():
        for claim in exp["claims"]:
            assert claim["verdict"].split(" ")[0] in ("holds", "not", "does")
    cost = json.loads((out / "results" / "cost.json").read_text())
    timing = cost["experiments"]["quant_noise_activations"]
    assert timing["arms"]["no noise"]["ratio_to_baseline"] == pytest.approx(1.0)
    assert timing["arms"]["2-bit activation noise"]["median_step_ms"] > 0
    assert "load_1min_start" in timing and "load_1min_end" in timing
    steps = json.loads((out / "results" / "train_steps.json").read_text())  # IBP's step timed against plain
    assert set(steps["results"]["no_jit"]) >= {"plain", "IBP"}
    assert steps["results"]["no_jit"]["plain"]["ratio_median"] == pytest.approx(1.0)
    md = (out / "benchmarks.md").read_text()
    assert "| technique (experiment) | claim | setting |" in md
    assert "QuantNoise (activations)" in md and "## Coverage of the catalogue" in md
    assert "| experiment | arm | median step (ms) |" in md and "| technique | model | extra passes |" in md
    timed = [e for e in cost["experiments"].values() if not e.get("skipped")]
    assert ("were measured under load" in md) == (max(max(e["load_1min_start"], e["load_1min_end"]) for e in timed)
                                                   > (os.cpu_count() or 2) + 0.5)
    assert "Measured on a quiet machine" in md or "Measured under load" in md  # the train-step table's condition
    assert (out / "bench_curves.png").is_file() and (out / "bench_overhead.png").is_file()
    # The sweep group: every arm ran, each stands for its catalogue row and has the accuracy claim.
    sweep = by_key["sweep_constraints"]
    assert sweep["sweep"] and not sweep["skipped_arms"]
    arms = sweep["settings"][0]["arms"]
    assert "plain" in arms and set(sweep["arm_techniques"]) == set(arms) - {"plain"}
    assert set(sweep["arm_techniques"].values()) == set(sweep["techniques"])
    accuracy_claims = {c["technique_arm"] for c in sweep["claims"] if c["metric"] == "test_acc"}
    assert accuracy_claims == set(sweep["arm_techniques"])
    assert set(cost["experiments"]["sweep_constraints"]["arms"]) == set(arms)
    assert "### Sweep: every other technique" in md and "| technique (group) | arm | claim |" in md
    assert (out / "bench_sweep.png").is_file()


def test_report_renders_noise_plot_from_json(harness, tmp_path):
    """The report alone (no training): a noise-rate experiment gives the accuracy-vs-noise plot."""
    common, registry, report, runner = harness
    stats = lambda m: {"mean": m, "std": 0.01, "n": 3, "values": [m] * 3}
    settings = []
    for noise in (0.0, 0.4):
        st = {"dataset": "mnist", "n_train": 10, "noise": noise, "noise_kind": "symmetric", "n_test": 10,
              "transform": ""}
        settings.append({"setting": st, "label": "x", "arms": {
            name: {"peer": "", "metrics": {"test_acc": stats(acc - noise / 4)},
                   "curves": [{"val_accuracy": [0.5, acc], "loss": [1, 0.5]}], "median_epoch_seconds": 0.1}
            for name, acc in (("CE", 0.8), ("ELR", 0.9))}})
    exp = {"key": "noisy", "techniques": ["ELR"], "claim": "c", "paper_setting": "p", "epochs": 2, "batch_size": 8,
           "seeds": [0, 1, 2], "model": "m", "optimizer": "o", "note": "", "metric_doc": {"test_acc": "d"},
           "settings": settings, "claims": [], "skipped_arms": {}, "arm_overrides": {}, "wall_seconds": 1}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "evidence.json").write_text(json.dumps(
        {"experiments": [exp], "coverage": [], "machine": {}, "command": "c"}))
    report.write_report(str(tmp_path), "test")
    assert (tmp_path / "bench_noise.png").is_file()
    assert "bench_noise.png" in (tmp_path / "benchmarks.md").read_text()


def test_merge_puts_a_rerun_in_place():
    experiments = [{"key": "a", "v": 1}, {"key": "c", "v": 1}]
    merged = bench._put(experiments, {"key": "b", "v": 2}, ["a", "b", "c"])
    assert [e["key"] for e in merged] == ["a", "b", "c"]
    merged = bench._put(merged, {"key": "a", "v": 3}, ["a", "b", "c"])
    assert [(e["key"], e["v"]) for e in merged] == [("a", 3), ("b", 2), ("c", 1)]


def test_load_banners_follow_the_measured_load():
    from benchmarks import bench_train_steps
    from benchmarks import report

    cores = os.cpu_count() or 2
    assert "under load" in report._cost_condition({"load_1min_start": cores + 1.0, "load_1min_end": 0.1})
    assert "quiet machine" in report._cost_condition({"load_1min_start": 0.2, "load_1min_end": cores + 0.4})
    merged = {"load_1min_start": cores + 3.0, "load_1min_end": cores + 3.0,  # an old sitting's loads: superseded
              "experiments": {"a": {"load_1min_start": 0.3, "load_1min_end": 1.0}, "b": {"skipped": "no cost arms"}}}
    assert "quiet machine" in report._cost_condition(merged)
    merged["experiments"]["c"] = {"load_1min_start": 0.3, "load_1min_end": cores + 1.0}
    assert "under load" in report._cost_condition(merged)
    machine = {"cores": 2, "load_average_at_start": [0.6, 0, 0], "load_average_at_end": [1.1, 0, 0]}
    assert not bench_train_steps.under_load({"machine": machine})
    machine["load_average_at_end"] = [4.9, 0, 0]
    assert bench_train_steps.under_load({"machine": machine})


def test_cost_datasets_follow_the_arm_inputs_and_targets(harness):
    """The cost stage fits what the evidence stage fits: an arm's subset (`inputs`/`labels` hooks) and the
    per-output targets of a multi-output training model (a list of arrays, not one stacked tensor)."""
    common, registry, report, runner = harness
    x = np.zeros((10, 3), "float32")
    y = np.arange(10)
    arm = registry.arm("subset", inputs=lambda ctx, x: x[:4], labels=lambda ctx, y: y[:4])
    ctx = registry.Context(data=common.Data(x, y, y, np.zeros(10, bool), x, y, 10, "t"), seed=0, setting=None)
    sub_x, sub_y = runner.train_xy(arm, ctx)
    assert len(sub_x) == len(sub_y) == 4
    xb, yb = next(iter(runner._dataset(x, [y, 2 * y], 10)))
    assert isinstance(yb, tuple) and len(yb) == 2 and xb.shape == (10, 3)
    np.testing.assert_array_equal(np.sort(yb[1].numpy()), 2 * np.arange(10))

"""What the harness measures after training an arm: one `Metric` per name (its function, its meaning, which
direction is better and how it is printed). The registry's claims infer their direction from here, and the report
formats the numbers from here, so a new metric is one `metric(...)` call.
"""

import dataclasses
from typing import Callable

import numpy as np

from benchmarks import common

SHARPNESS_SAMPLES = 1024
HESSIAN_SAMPLES = 256
ROBUST_SAMPLES = 500  # test samples attacked (PGD) or certified (IBP)
PROBE_TRAIN = 1500  # training samples a linear probe is fitted on


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable  # fn(run) -> float; run has .model, .net, .ctx, .history, .values (the metrics measured so far)
    doc: str
    higher: bool = True  # which direction is better
    pct: bool = False  # printed as a percentage


METRICS = {}


def metric(name, doc, higher=True, pct=False):
    def register(fn):
        METRICS[name] = Metric(name, fn, doc, higher, pct)
        return fn

    return register


@dataclasses.dataclass
class Run:
    model: object  # what was fitted (a RegularizedModel or the network)
    net: object  # the plain network inside it
    ctx: object  # registry.Context
    history: dict
    values: dict


def _acc(run, x, y):
    return common.accuracy(run.net, x, y)


# -- accuracy -------------------------------------------------------------------------------------------------

metric("test_acc", "test accuracy after the last epoch", pct=True)(
    lambda r: _acc(r, r.ctx.data.x_test, r.ctx.data.y_test))
metric("best_test_acc", "best test accuracy over epochs (not a fair model-selection number: no validation split)",
       pct=True)(lambda r: float(max(r.history.get("val_accuracy", [np.nan]))))
metric("train_loss", "training loss of the last epoch (on the labels trained on, with the arm's own loss)",
       higher=False)(lambda r: float(r.history["loss"][-1]))
metric("shift_acc", "accuracy on the shifted test set of the setting (see the setting's transform)", pct=True)(
    lambda r: _acc(r, *r.ctx.data.extra_test["shift"]))
metric("spurious_acc", "accuracy on test images whose patch is placed by the label, as in training (in-distribution)",
       pct=True)(lambda r: _acc(r, *r.ctx.data.extra_test["spurious"]))


@metric("ece", "expected calibration error of the test predictions (15 equal-width confidence bins)", higher=False,
        pct=True)
def _ece(r, bins=15):
    probs = common.probabilities(r.net, r.ctx.data.x_test, r.ctx.extra.get("probs", "softmax"))
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    correct = predicted == r.ctx.data.y_test
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


# -- flatness -------------------------------------------------------------------------------------------------

metric("sharpness_rho", f"L(w + 0.05 g/||g||) - L(w) on {SHARPNESS_SAMPLES} fixed training samples", higher=False)(
    lambda r: common.ascent_sharpness(r.net, r.ctx.data.x_train[:SHARPNESS_SAMPLES],
                                      r.ctx.data.y_train[:SHARPNESS_SAMPLES], rho=0.05))
metric("hessian_top_eig", f"top Hessian eigenvalue (8 power iterations, {HESSIAN_SAMPLES} fixed training samples)",
       higher=False)(
    lambda r: common.hessian_top_eigenvalue(r.net, r.ctx.data.x_train[:HESSIAN_SAMPLES],
                                            r.ctx.data.y_train[:HESSIAN_SAMPLES], iterations=8))

# -- weights --------------------------------------------------------------------------------------------------

metric("orth_error", "max over conv layers of max |sigma - 1| of the circular conv operator", higher=False)(
    lambda r: common.orthogonality_error(r.net)[0])
metric("weight_norm", "L2 norm of all kernels together (the naive-loss-minimisation direction scales it up)",
       higher=False)(lambda r: common.kernel_norm(r.net))
metric("nm_2of4", "fraction of the groups of 4 input weights with at most 2 non-zeros, over the deployed kernels of "
       "the layers that can be 2:4 (input channels divisible by 4: conv1, hidden, logits)")(
    lambda r: common.nm_fraction(r.net, 2, 4))


def _quant_acc(weight_bits=None, activation_bits=None):
    return lambda r: common.quantized_accuracy(r.net, r.ctx.data.x_test, r.ctx.data.y_test, weight_bits,
                                               activation_bits)


def _gap(name):
    return lambda r: r.values["test_acc"] - r.values[name]


metric("w4_acc", "test accuracy with weights fake-quantized to 4 bits per output channel (post-training)", pct=True)(
    _quant_acc(weight_bits=4))
metric("w4_gap", "test_acc - w4_acc", higher=False, pct=True)(_gap("w4_acc"))
metric("w3_acc", "test accuracy with weights fake-quantized to 3 bits per output channel (post-training)", pct=True)(
    _quant_acc(weight_bits=3))
metric("w3_gap", "test_acc - w3_acc", higher=False, pct=True)(_gap("w3_acc"))
metric("a2_acc", "test accuracy with post-ReLU activations fake-quantized to 2 bits per tensor", pct=True)(
    _quant_acc(activation_bits=2))
metric("a2_gap", "test_acc - a2_acc", higher=False, pct=True)(_gap("a2_acc"))

# -- logits ---------------------------------------------------------------------------------------------------

metric("logz_abs", "mean |log Z| = |logsumexp(logits)| over the test set (the z-loss drives it to 0)", higher=False)(
    lambda r: common.mean_abs_logz(r.net, r.ctx.data.x_test))
metric("sc_fraction", "Softmax Collapse: fraction of training samples whose float32 correct-class probability "
       "rounds to exactly 1 (their loss gradient is 0); StableMax arms use StableMax probabilities", higher=False,
       pct=True)(lambda r: common.collapse_fraction(r.net, r.ctx.data.x_train, r.ctx.data.y_train,
                                                    r.ctx.extra.get("probs", "softmax")))

# -- robustness -----------------------------------------------------------------------------------------------

metric("verified_acc", f"IBP-certified accuracy at L-inf eps=0.1 on {ROBUST_SAMPLES} test images (worst-case logits "
       "of interval bound propagation through the trained network still pick the label)", pct=True)(
    lambda r: common.verified_accuracy(r.net, r.ctx.data.x_test[:ROBUST_SAMPLES],
                                       r.ctx.data.y_test[:ROBUST_SAMPLES], epsilon=0.1))
metric("pgd_acc", f"accuracy under a 10-step L-inf PGD attack, eps=0.1, step 0.025, on {ROBUST_SAMPLES} test "
       "images", pct=True)(
    lambda r: common.pgd_accuracy(r.net, r.ctx.data.x_test[:ROBUST_SAMPLES], r.ctx.data.y_test[:ROBUST_SAMPLES],
                                  epsilon=0.1, steps=10))
metric("pgd_acc_8", f"accuracy under a 10-step L-inf PGD attack, eps=8/255, step 2/255, on {ROBUST_SAMPLES} test "
       "images", pct=True)(
    lambda r: common.pgd_accuracy(r.net, r.ctx.data.x_test[:ROBUST_SAMPLES], r.ctx.data.y_test[:ROBUST_SAMPLES],
                                  epsilon=8 / 255, steps=10))
metric("lin_err", f"ELLE's local-linearity error of the test cross-entropy in the eps=8/255 box (mean over "
       f"{ROBUST_SAMPLES} test images, 4 random triplets each)", higher=False)(
    lambda r: common.linearity_error(r.net, r.ctx.data.x_test[:ROBUST_SAMPLES], r.ctx.data.y_test[:ROBUST_SAMPLES],
                                     epsilon=8 / 255))

# -- representations ------------------------------------------------------------------------------------------

metric("probe_acc", f"linear-probe test accuracy on the flattened conv features (logistic regression fitted on "
       f"{PROBE_TRAIN} clean training labels)", pct=True)(
    lambda r: common.probe_accuracy(r.net, r.ctx.data, "flatten", PROBE_TRAIN))


def measure(names, model, net, ctx, history):
    run = Run(model, net, ctx, history, {})
    for name in names:
        run.values[name] = float(METRICS[name].fn(run))
    return run.values

# -- the sweep's target metrics (named layers of `benchmarks.sweep.sweep_cnn`; more live in the sweep group files) --


def _hidden(r):
    from benchmarks.sweep import hidden_kernel

    return hidden_kernel(r.net).astype("float64")


def _conv_matrices(r):
    """Each conv kernel reshaped to (k*k*C_in, C_out), the matrix its filters are the columns of."""
    return [np.asarray(core.kernel, "float64").reshape(-1, core.kernel.shape[-1])
            for _, core in common.conv_layers(r.net)]


def _gram_error(w):
    return float(np.linalg.norm(w.T @ w - np.eye(w.shape[1])))


def _small_fraction(w, rel=0.01):
    return float(np.mean(np.abs(w) < rel * np.abs(w).max()))


def _dead_columns(w, rel=0.01):
    norms = np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)
    return float(np.mean(norms < rel * norms.max()))


metric("hidden_spectral_norm", "largest singular value of the hidden Dense kernel", higher=False)(
    lambda r: float(np.linalg.norm(_hidden(r), 2)))
metric("hidden_gram_error", "||W^T W - I||_F of the hidden Dense kernel W (inputs x units): 0 when its columns are "
       "orthonormal", higher=False)(lambda r: _gram_error(_hidden(r)))
metric("conv_gram_error", "mean over the conv layers of ||W^T W - I||_F, W the kernel reshaped to "
       "(k*k*C_in, C_out)", higher=False)(lambda r: float(np.mean([_gram_error(w) for w in _conv_matrices(r)])))
metric("hidden_small_fraction", "fraction of the hidden kernel's entries below 1% of its largest magnitude",
       pct=True)(lambda r: _small_fraction(_hidden(r)))
metric("hidden_dead_units", "fraction of hidden units whose kernel column norm is below 1% of the largest",
       pct=True)(lambda r: _dead_columns(_hidden(r)))
metric("conv_dead_filters", "fraction of conv filters (over both conv layers) whose norm is below 1% of their "
       "layer's largest", pct=True)(lambda r: float(np.mean(np.concatenate([
           np.linalg.norm(w, axis=0) < 0.01 * np.linalg.norm(w, axis=0).max() for w in _conv_matrices(r)]))))
def energy_rank(w, fraction=0.99):
    """The number of singular values of the matrix `w` that hold `fraction` of its energy (sum of sigma^2)."""
    energy = np.sort(np.linalg.svd(np.asarray(w, "float64"), compute_uv=False))[::-1] ** 2
    return float(np.searchsorted(np.cumsum(energy) / energy.sum(), fraction) + 1)


metric("hidden_rank_99", "number of singular values of the hidden kernel that hold 99% of its energy "
       "(sum of sigma^2)", higher=False)(lambda r: energy_rank(_hidden(r)))

"""Sweep group: callbacks (`keras_reg.callbacks`, the deep-supervision decay) added to the sweep network's fit.

Callbacks that only observe training (the orthogonality monitor, ADELE's onset detector) get no target claim: they
do not change the model, so the entry checks that they run, keep the accuracy, and what they cost; the onset
detector's result is reported as a metric. Fine-tuning callbacks (LT-SFT) start from the sweep network trained for
one epoch (`pretrained`), their anchor.
"""

import math

import numpy as np

from benchmarks import registry
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import EPOCHS
from benchmarks.sweep import LEARNING_RATE
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep import sweep_cnn
from benchmarks.sweep_losses import deep_supervision_kwargs


def steps(ctx, batch_size=None):
    return ctx.epochs * math.ceil(len(ctx.data.y_train) / (batch_size or ctx.batch_size))


def pretrained(ctx, epochs=1):
    """The sweep network after `epochs` epochs of the plain training (CE, Adam); its weights are the fine-tuning
    anchor, left in ctx.extra["anchor"]."""
    import keras

    net = sweep_cnn(ctx)
    net.compile(keras.optimizers.Adam(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(ctx.data.x_train, ctx.data.y_train, batch_size=ctx.batch_size, epochs=epochs, verbose=0, shuffle=True)
    ctx.extra["anchor"] = [np.array(w) for w in net.get_weights()]
    return net


def record_start(ctx, model):
    """A callback leaving the weights at the start of the fit in ctx.extra["anchor"] (the plain arm's anchor)."""
    import keras

    class RecordStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            ctx.extra.setdefault("anchor", [np.array(w) for w in registry.common.inner_model(model).get_weights()])

    return [RecordStart()]


def changed_fraction(r):
    """Fraction of the weight entries that differ from the anchor (the fine-tune difference's density)."""
    anchor = r.ctx.extra.get("anchor")
    if anchor is None:
        return float("nan")
    weights = r.net.get_weights()
    return float(sum(np.sum(w != a) for w, a in zip(weights, anchor)) / sum(w.size for w in weights))


metric("cb_changed_fraction", "fraction of the weight entries that differ from the weights the fit started from "
       "(LT-SFT: the sparse fine-tune difference)", higher=False, pct=True)(changed_fraction)
metric("cb_frozen_fraction", "fraction of the layers with weights that GradES froze by the end of the fit (0 "
       "without GradES: nothing is frozen)", pct=True)(lambda r: r.ctx.extra.get("frozen_fraction", 0.0))
metric("cb_onset_classes", "fraction of classes whose early-learning onset ADELE's detector flagged (nan without "
       "it)", pct=True)(lambda r: r.ctx.extra.get("onset_fraction", float("nan")))
metric("cb_range_lr", "the maximum learning rate suggested by the LR range test (nan without it)")(
    lambda r: r.ctx.extra.get("range_lr", float("nan")))


def _after(ctx, key, fn):
    """A callback storing fn() in ctx.extra[key] when training ends (what the metrics read)."""
    import keras

    class Store(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            ctx.extra[key] = fn()

    return Store()


def _one_cycle(ctx, max_lr):
    return _obj("keras_reg.callbacks.OneCycle")(max_lr=max_lr, total_steps=steps(ctx))


def _range_test_then_one_cycle(ctx, model):
    """Smith's recipe: the LR range test (24 steps, about 3 of the 4 epochs, exponential 1e-5 -> 1, weights and
    optimizer restored) picks the maximum learning rate of a 1cycle run."""
    finder = _obj("keras_reg.callbacks.LearningRateRangeTest")(min_lr=1e-5, max_lr=1.0, num_steps=24)
    finder.run(model, ctx.data.x_train, ctx.data.y_train, batch_size=ctx.batch_size)
    ctx.extra["range_lr"] = float(finder.suggested_lr)
    return [_one_cycle(ctx, finder.suggested_lr)]


def _onset(ctx, model):
    onset = _obj("keras_reg.callbacks.EarlyLearningOnset")(ctx.data.num_classes, data=(ctx.data.x_train,
                                                                                         ctx.data.y_train))
    return [onset, _after(ctx, "onset_fraction", lambda: len(onset.onsets) / ctx.data.num_classes)]


def _grades(ctx, model):
    grades = _obj("keras_reg.callbacks.GradientEarlyStopping")(tau=0.05, alpha=0.3, interval=1)
    layers = [layer for layer in model.layers if layer.weights]
    return [grades, _after(ctx, "frozen_fraction", lambda: len(grades.frozen) / len(layers))]


REGIME = dict(batch_size=256, small_batch_size=128)  # the large batch and the regime it adapts (k = 2)

group("sweep_callbacks", "A training callback keeps the accuracy and does what it is for.", entries=(
    # Super-convergence: one cycle peaking at 5x the sweep's Adam rate (Smith & Topin peak near the top of the range
    # test), beta_1 cycled 0.95 -> 0.85 -> 0.95; the paper's claim: higher accuracy in the same budget.
    entry("1cycle (super-convergence)", "1cycle max_lr=1e-2", callbacks=lambda ctx, model: [_one_cycle(ctx, 1e-2)],
          claims=(better("test_acc", "1cycle reaches a higher test accuracy in the same epochs"),)),
    entry("LR range test", "range test 1e-5..1 (24 steps) -> 1cycle", callbacks=_range_test_then_one_cycle),
    # ADELE's detector with the paper's r = 0.9 on the training set's per-class accuracy; it only observes.
    entry("ADELE onset detection", "onset detector r=0.9", callbacks=_onset),
    # The companions of sweep_losses' DSN entry (alpha = 0.3 after both conv blocks), decayed to 0 over the fit.
    entry("DSN companion decay", "companions alpha=0.3, decayed over the fit", **deep_supervision_kwargs(),
          callbacks=lambda ctx, model: [_obj("keras_reg.training.CompanionDecay")(ctx.epochs)],
          claims=(better("test_acc", "the deeply supervised network's test accuracy is higher"),)),
    # Hoffer et al.: batch 256 instead of 128 (k = 2, the cost limit), sqrt(2) x the learning rate, 2 x the epochs
    # (the same number of updates). No ghost BN: the sweep network has no BatchNorm. The paper's claim is the
    # automatic one (the large-batch regime keeps the small-batch accuracy).
    entry("Ghost BN regime adaptation", "batch 256 regime of batch 128 (sqrt(2) lr, 2x epochs)", batch_size=256,
          epochs=2 * EPOCHS, callbacks=lambda ctx, model: [_obj("keras_reg.callbacks.RegimeAdaptation")(
              learning_rate=LEARNING_RATE, **REGIME)]),
    # GradES: the released callback's alpha = 0.3; tau = 0.05 on the summed |change| per step, about the per-step
    # movement of the first conv layer's 88 weights at Adam's late-training step size (the paper's transformer
    # thresholds do not transfer: d_c grows with the layer's size).
    entry("GradES", "GradES tau=0.05 alpha=0.3", callbacks=_grades,
          claims=(better("cb_frozen_fraction", "GradES freezes layers before the end (fewer gradients computed)"),)),
    # ISS-P at 50% per layer (the paper's lower sparsities), the code's shrink 0.99, the classifier layer left dense.
    entry("ISS-P", "ISS-P 50% shrink 0.99 (conv, hidden)", callbacks=lambda ctx, model: [
        _obj("keras_reg.callbacks.IterativeSoftShrinkage")(sparsity=0.5, shrink=0.99,
                                                           layers=["conv0", "conv1", "hidden"])],
          claims=(better("hidden_small_fraction", "the hidden kernel is sparser"),)),
    # LT-SFT: from the 1-epoch network, 1 dense epoch, then the 5% of weights that moved most are fine-tuned (the
    # paper's K is a few percent of the parameters).
    entry("LT-SFT", "LT-SFT density 5% (1 dense epoch)", net=pretrained,
          optimizer=lambda: _obj("keras_reg.optimizers.SparseUpdateMask")(_obj("keras.optimizers.Adam")(
              LEARNING_RATE)),
          callbacks=lambda ctx, model: [_obj("keras_reg.callbacks.LotteryTicketSparseFineTuning")(full_epochs=1,
                                                                                                  density=0.05)],
          claims=(better("cb_changed_fraction", "the fine-tune difference is sparse"),)),
    entry("Orthogonality monitor (Lorth, conv singular values)", "orthogonality monitor (every epoch)",
          callbacks=lambda ctx, model: [_obj("keras_reg.callbacks.OrthogonalityMonitor")(input_size=16)]),
    # An L2 penalty 1e-3 on the hidden kernel warmed up linearly over the first 2 epochs (a Python-number
    # coefficient: the train function is rebuilt when it changes).
    entry("Regularization-strength schedule", "L2 1e-3 (hidden) warmed up over 2 epochs",
          dense=lambda name: {"kernel_regularizer": _obj("keras.regularizers.L2")(1e-3)} if name == "hidden" else {},
          callbacks=lambda ctx, model: [_obj("keras_reg.callbacks.RegularizationSchedule")(
              "hidden.kernel_regularizer.l2", _obj("keras_reg.callbacks.WarmupDecay")(peak=1e-3, warmup=2))],
          claims=(better("weight_norm", "the kernels' norm is lower (the scheduled penalty acts)"),)),
    # TRP as in the public script: 99% energy, projected every step; on the conv layers and the hidden layer.
    entry("TRP (Trained Rank Pruning)", "TRP energy 0.99 every step (conv, hidden)", callbacks=lambda ctx, model: [
        _obj("keras_reg.callbacks.TrainedRankPruning")(energy=0.99, period=1, layers=["conv0", "conv1", "hidden"])],
          claims=(better("hidden_rank_99", "the hidden kernel has a lower 99%-energy rank"),)),
), metrics=("test_acc", "hidden_small_fraction", "hidden_rank_99", "weight_norm", "cb_changed_fraction",
            "cb_frozen_fraction", "cb_onset_classes", "cb_range_lr"),
    plain=registry.arm("plain", validate=False, callbacks=record_start),
    note="Strengths from the papers / public code where they transfer (each entry's comment). The fine-tuning "
         "entry (LT-SFT) fine-tunes on the same data after one epoch of pre-training, not on a new language/task. "
         "The regime adaptation uses k = 2 (batch 256 for 128) to stay within the cost limit and no ghost BN. "
         "The monitor and the onset detector only observe (no target claim). The plain arm records its starting "
         "weights so that the changed fraction has a baseline (1.0: dense training).")

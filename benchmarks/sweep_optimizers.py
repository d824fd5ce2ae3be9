"""Sweep group: optimizer wrappers (`keras_reg.optimizers`) around the sweep's Adam, on the sweep network.

The structured-sparsity steps (group-lasso prox, OTO's DHSPG/H2SPG) act on groups = output units of the hidden
layer; H2SPG needs removal structures in a graph, so its network splits the 64-unit hidden layer
into four parallel 16-unit branches joined by a concatenation (the same function class as the plain Dense(64)).
"""

import numpy as np

from benchmarks import registry
from benchmarks.metrics import energy_rank
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import FILTERS
from benchmarks.sweep import HIDDEN
from benchmarks.sweep import LEARNING_RATE
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep_callbacks import changed_fraction
from benchmarks.sweep_callbacks import pretrained
from benchmarks.sweep_callbacks import record_start

BRANCHES = 4
STEPS_PER_EPOCH = 8  # ceil(1000 / 128): the DHSPG/H2SPG partition and projection start after one epoch
UNIT_LAYERS = ("hidden",)  # DHSPG's groups: the hidden units (layers of different fan-in fail, see note)


def branched_cnn(ctx):
    """The sweep network with its hidden Dense(64) split into BRANCHES Dense(64 / BRANCHES) branches ("branch{i}")
    whose outputs are concatenated: H2SPG's removal structures."""
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    h = inputs
    for i, filters in enumerate(FILTERS):
        h = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(keras.layers.ReLU(name=f"act_conv{i}")(h))
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Concatenate(name="concat")([keras.layers.Dense(HIDDEN // BRANCHES, name=f"branch{i}")(h)
                                                 for i in range(BRANCHES)])
    h = keras.layers.ReLU(name="act_hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(ctx.data.num_classes, name="logits")(h), name="branched_cnn")


def _hidden(net):
    """(kernel, bias) of the hidden units: the "hidden" Dense, or the concatenated branches."""
    names = {layer.name for layer in net.layers}
    layers = [net.get_layer("hidden")] if "hidden" in names else [net.get_layer(f"branch{i}") for i in range(BRANCHES)]
    return (np.concatenate([np.asarray(layer.kernel) for layer in layers], 1),
            np.concatenate([np.asarray(layer.bias) for layer in layers]))


def _zero_units(kernel, bias):
    return (np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)) & (bias == 0)


metric("opt_zero_units", "fraction of the hidden units whose kernel column and bias are exactly 0 (removable)",
       pct=True)(lambda r: float(np.mean(_zero_units(*_hidden(r.net)))))


@metric("opt_zero_blocks", f"fraction of the {BRANCHES} blocks of {HIDDEN // BRANCHES} hidden units (H2SPG's "
        "branches; in the plain network its consecutive column blocks) that are exactly 0 (erasable)", pct=True)
def _zero_blocks(r):
    zero = _zero_units(*_hidden(r.net))
    return float(np.mean(zero.reshape(BRANCHES, -1).all(axis=1)))


@metric("opt_hidden_rank_99", "number of singular values of the hidden kernel (the branches concatenated) that "
        "hold 99% of its energy", higher=False)
def _hidden_rank(r):
    return energy_rank(_hidden(r.net)[0])


metric("opt_changed_fraction", "fraction of the weight entries that differ from the weights the fit started from "
       "(the sparse update mask's difference)", higher=False, pct=True)(changed_fraction)


def _adam():
    return _obj("keras.optimizers.Adam")(LEARNING_RATE)


def _wrapped(path, inner=_adam, **kwargs):
    return lambda: _obj(path)(inner(), **kwargs)


def _random_mask(density):
    """Installs a fixed random mask of `density` (per variable) anchored at the pre-trained weights: the gradient
    mask alone (the LT-SFT row of sweep_callbacks selects the mask from the dense fine-tune instead)."""
    def callbacks(ctx, model):
        import keras

        rng = np.random.default_rng(ctx.seed)

        class InstallMask(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                variables = model.trainable_variables
                if not model.optimizer.built:
                    model.optimizer.build(variables)
                masks = {v.path: (rng.random(v.shape) < density).astype("float32") for v in variables}
                model.optimizer.set_masks(masks, {v.path: np.asarray(v) for v in variables})

        return [InstallMask()]

    return callbacks


DHSPG = "keras_reg.optimizers.DualHalfSpaceProjectedGradient"
# DHSPG's lambda scaled to the budget: the code's 1e-3 at SGD lr 0.1 runs for ~1e5 steps (lr*lambda*T ~ 10); here
# 24 penalised steps, so lambda = 2 at Adam's 2e-3 (SGD 0.05: lambda = 0.1) puts lr*lambda*T near 0.1 - 1 (with the
# adaptive amplification up to 10x), the order of a unit's norm.
group("sweep_optimizers", "An optimizer wrapper keeps the accuracy and gives the structure it is for.", entries=(
    # Yuan & Lin's group lasso by its prox on the hidden units; lambda = 5 so the total shrinkage lr*lambda*T
    # (2e-3 * 5 * 32 = 0.3) is a fraction of a unit's initial norm (~1.4).
    entry("Group-lasso proximal step", "group-lasso prox lambda=5 (hidden units)",
          optimizer=_wrapped("keras_reg.optimizers.GroupLassoProximal", layers=["hidden"], lmbda=5.0),
          claims=(better("opt_zero_units", "whole hidden units are exactly 0"),)),
    entry("OTOv2-DHSPG", "DHSPG target 50% lambda=2 (Adam; hidden units)",
          optimizer=_wrapped(DHSPG, layers=list(UNIT_LAYERS), target_group_sparsity=0.5, lmbda=2.0,
                             partition_step=STEPS_PER_EPOCH, half_space_step=STEPS_PER_EPOCH),
          claims=(better("opt_zero_units", "a fraction of the hidden units is exactly 0"),)),
    # OTOv3 prunes with the same DHSPG step; this arm uses the code's SGD variant (SGD 0.05, momentum 0.9).
    entry("OTOv3-DHSPG", "DHSPG target 50% lambda=0.1 (SGD 0.05 m0.9; hidden units)",
          optimizer=_wrapped(DHSPG, inner=registry.sgd(0.05, 0.9), layers=list(UNIT_LAYERS),
                             target_group_sparsity=0.5, lmbda=0.1, partition_step=STEPS_PER_EPOCH,
                             half_space_step=STEPS_PER_EPOCH),
          claims=(better("opt_zero_units", "a fraction of the hidden units is exactly 0"),)),
    entry("OTOv3-H2SPG", f"H2SPG target 50% lambda=2 ({BRANCHES} hidden branches)", net=branched_cnn,
          optimizer=_wrapped("keras_reg.optimizers.HierarchicalHalfSpaceProjectedGradient",
                             groups=[f"branch{i}" for i in range(BRANCHES)],
                             graph={"input": [f"branch{i}" for i in range(BRANCHES)],
                                    **{f"branch{i}": ["concat"] for i in range(BRANCHES)}, "concat": ["output"]},
                             target_group_sparsity=0.5, lmbda=2.0, partition_step=STEPS_PER_EPOCH,
                             half_space_step=STEPS_PER_EPOCH),
          claims=(better("opt_zero_blocks", "whole hidden branches are erased"),)),
    # The TRP script's energy 0.99; lambda 1e-2 instead of its 3e-4 (for ~1e5 SGD steps) for the 32 steps here.
    entry("TRP nuclear-norm sub-gradient", "TRP sub-gradient lambda=1e-2 energy 0.99 (all kernels)",
          optimizer=_wrapped("keras_reg.optimizers.TRPNuclearSubgradient", lmbda=1e-2, energy=0.99),
          claims=(better("opt_hidden_rank_99", "the hidden kernel has a lower 99%-energy rank"),)),
    # The LT-SFT mask with a fixed random 5% of each variable, from the 1-epoch network (see sweep_callbacks).
    entry("LT-SFT gradient mask", "update mask, random 5% (from 1 epoch)", net=pretrained,
          optimizer=_wrapped("keras_reg.optimizers.SparseUpdateMask"), callbacks=_random_mask(0.05),
          claims=(better("opt_changed_fraction", "only the masked-in 5% of the weights move"),)),
), metrics=("test_acc", "opt_zero_units", "opt_zero_blocks", "opt_hidden_rank_99",
            "opt_changed_fraction"),
    plain=registry.arm("plain", validate=False, callbacks=record_start),
    note="Hyper-parameters: the papers' / public code's, with the penalty strengths scaled to the 32 steps of this "
         "budget (each entry's comment says how). The DHSPG/H2SPG partition and half-space projection start after "
         "one epoch (step 8; the quick run's 4 steps never reach it). H2SPG runs on a branched copy of the sweep "
         "network (4 x Dense(16) concatenated, the same function class as Dense(64)) with the branches as the "
         "removal structures. The gradient-mask entry uses a fixed random mask (the selection is the LT-SFT "
         "callback's, in sweep_callbacks), fine-tuning on the same data after one epoch of pre-training. DHSPG groups "
         "only the hidden units: with layers of different fan-in (conv filters and hidden units together) its "
         "partition concatenates group matrices of different widths and fails (reported).")

"""Sweep groups: weight and activity regularizers (`keras_reg.regularizers`) in their slot of the sweep network.

Two groups:

- `sweep_regularizers`: a regularizer on the kernels (or activations) of the plain `sweep_cnn` trained from scratch.
- `sweep_regularizers_finetune`: the anchor regularizers (EWC, L2-anchor, parameter repulsion) need a previous model.
  The smallest honest version: the network is pre-trained on task A (Fashion-MNIST classes 0-4 of the 1,000 training
  images) inside the arm's build, then fine-tuned on task B (classes 5-9) for the sweep's 4 epochs; the plain arm of
  this group is that fine-tuning without any penalty. Test accuracy is over all 10 classes.

Budget: 1,000 images / batch 128 = 8 steps an epoch, 32 steps in all. Papers' coefficients are set for 10^4-10^5
steps with the penalty acting slowly; where that would leave the penalty's gradient orders of magnitude below the
cross-entropy's for the whole run, the coefficient is scaled up, and the arm name and the note say so.
"""

import numpy as np

from benchmarks.common import layer_outputs
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep import hidden_kernel
from benchmarks.sweep import sweep_cnn

KERNELS = ("conv0", "conv1", "hidden")  # the feature layers; the logits layer is left free, as in most papers


def _kernel_hooks(make, layers=KERNELS):
    """sweep_cnn hooks giving every layer in `layers` its own `make()` as kernel_regularizer."""
    return {"conv": lambda i: {"kernel_regularizer": make()} if f"conv{i}" in layers else {},
            "dense": lambda name: {"kernel_regularizer": make()} if name in layers else {}}


def _reg(path, **kwargs):
    return lambda: _obj(path)(**kwargs)


def _net(ctx, **hooks):
    """sweep_cnn that records its initial kernels in ctx.extra["init"] (for the distance-to-initialization metric)."""
    net = sweep_cnn(ctx, **hooks)
    ctx.extra["init"] = {name: np.array(net.get_layer(name).kernel) for name in KERNELS}
    return net


def _identity(reg):
    """A pass-through layer carrying an activity regularizer (to tag post-activation embeddings)."""
    import keras

    return keras.layers.Identity(activity_regularizer=reg)


def _features(r, layer):
    z = np.asarray(layer_outputs(r.net, layer, r.ctx.data.x_test), "float64")
    return z.reshape(len(z), -1)


def _dispersion(z):
    """log mean_{i,j} exp(-||z_i - z_j||^2 / D): the InfoNCE-L2 dispersive loss of the whole test set."""
    sq = (z ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0) / z.shape[1]
    a = -d2.ravel()
    return float(a.max() + np.log(np.mean(np.exp(a - a.max()))))


# -- this group's target metrics --------------------------------------------------------------------------------


@metric("reg_hidden_offdiag", "||W^T W * (1 - I)||_F of the hidden kernel: the correlation of its units' weight "
        "vectors, norms left out (BigGAN's penalty)", higher=False)
def _offdiag(r):
    w = hidden_kernel(r.net).astype("float64")
    gram = w.T @ w
    return float(np.linalg.norm(gram - np.diag(np.diag(gram))))


@metric("reg_filter_norm_error", "mean over the filters of conv0, conv1 and the hidden units of (1 - ||w_i||)^2 "
        "(0 when every filter has unit norm: the Oblique manifold)", higher=False)
def _filter_norm_error(r):
    errors = []
    for name in KERNELS:
        w = np.asarray(r.net.get_layer(name).kernel, "float64")
        errors.append((1.0 - np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)) ** 2)
    return float(np.mean(np.concatenate(errors)))


@metric("reg_hidden_dispersion", "log mean_ij exp(-||z_i - z_j||^2 / D) of the post-ReLU hidden features over the "
        "test set (the dispersive loss; lower: more spread out)", higher=False)
def _hidden_dispersion(r):
    return _dispersion(_features(r, "act_hidden"))


@metric("reg_conv_dispersion", "the dispersive loss of the flattened conv features (the input of the hidden layer) "
        "over the test set", higher=False)
def _conv_dispersion(r):
    return _dispersion(_features(r, "flatten"))


@metric("reg_hidden_flops", "FLOPS of the post-ReLU hidden features on the test set: sum_j (mean_i |h_ij|)^2 "
        "(lower: fewer units active across samples)", higher=False)
def _hidden_flops(r):
    return float(np.sum(np.abs(_features(r, "act_hidden")).mean(0) ** 2))


@metric("reg_w2_to_init", "mean over conv0, conv1, hidden of the 2-Wasserstein distance between the values of the "
        "trained kernel and of its initial values, in units of the initial values' RMS", higher=False)
def _w2_to_init(r):
    out = []
    for name, w0 in r.ctx.extra["init"].items():
        w = np.sort(np.asarray(r.net.get_layer(name).kernel, "float64").ravel())
        w0 = np.sort(w0.ravel().astype("float64"))
        out.append(np.sqrt(np.mean((w - w0) ** 2)) / np.sqrt(np.mean(w0 ** 2)))
    return float(np.mean(out))


# -- group 1: regularizers on the network trained from scratch ------------------------------------------------------


def _wasserstein_net(ctx, factor):
    # anchored at the freshly initialized kernels of the three feature layers (the paper's theta_0)
    net = _net(ctx)
    _obj("keras_reg.regularizers.regularize_to_initialization")(net, factor, layers=KERNELS)
    return net


_MASKSPARSITY_MASK = [0] * 32 + [1] * 32  # the hidden units marked for pruning (see the note)


def _scheduled_l1_schedule(ctx, model):
    # Jia et al.'s linearly decaying L1 coefficient, from its peak to 0 over the fine-tuning epochs; one regularizer
    # instance is shared by all kernels, so one path sets them all
    peak = 5e-4
    values = [peak * (1 - t / ctx.epochs) for t in range(ctx.epochs)]
    return [_obj("keras_reg.callbacks.RegularizationSchedule")("hidden.kernel_regularizer.factor", values)]


def _scheduled_l1_net(ctx):
    # one ScheduledL1Regularizer shared by the three kernels (a fresh one for every build)
    reg = _obj("keras_reg.regularizers.ScheduledL1Regularizer")(5e-4)
    return _net(ctx, **_kernel_hooks(lambda: reg))


group(
    "sweep_regularizers",
    "A weight or activity regularizer keeps the accuracy and moves the quantity it penalises.",
    net=_net,
    entries=(
        entry("BigGAN orthogonal regularization", "BigGAN off-diagonal ortho 1e-2 (conv+hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.OffDiagonalOrthogonalRegularizer", factor=1e-2)),
              claims=(better("reg_hidden_offdiag", "the hidden units' weight vectors are less correlated"),)),
        entry("Soft orthogonality (SO)", "SO 1e-2 (conv+hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.SoftOrthogonalityRegularizer", factor=1e-2)),
              claims=(better("hidden_gram_error", "the hidden kernel is closer to orthonormal columns"),
                      better("conv_gram_error", "the conv kernels are closer to orthonormal filters"))),
        entry("Orthonormality regularizer (filter banks)", "filter-bank orthonormality 1e-2 (conv)",
              **_kernel_hooks(_reg("keras_reg.regularizers.OrthonormalFilterRegularizer", factor=1e-2),
                              layers=("conv0", "conv1")),
              claims=(better("conv_gram_error", "the conv filter banks are closer to orthonormal"),)),
        entry("SRIP", "SRIP 1e-1 (conv+hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.SpectralRestrictedIsometryRegularizer", factor=1e-1)),
              claims=(better("hidden_gram_error", "the hidden kernel is closer to orthonormal columns"),
                      better("conv_gram_error", "the conv kernels are closer to orthonormal filters"))),
        entry("SORSA orthonormal regularizer", "SORSA columns 1e-1 (hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.SORSAOrthonormalRegularizer", factor=1e-1,
                                   side="columns"), layers=("hidden",)),
              claims=(better("hidden_gram_error", "the hidden kernel's columns are closer to orthonormal"),)),
        entry("Norm Loss", "Norm Loss 1e-2 (conv+hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.NormLossRegularizer", factor=1e-2)),
              claims=(better("reg_filter_norm_error", "the filters are closer to unit norm"),)),
        entry("Group lasso", "group lasso 1e-3 filters (conv+hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.GroupLassoRegularizer", factor=1e-3, groups="filters")),
              claims=(better("conv_dead_filters", "more conv filters are driven to zero"),
                      better("hidden_dead_units", "more hidden units are driven to zero"))),
        entry("MaskSparsity", "MaskSparsity L1 1e-3 on half the hidden units",
              **_kernel_hooks(_reg("keras_reg.regularizers.MaskedL1Regularizer", factor=1e-3,
                                   mask=_MASKSPARSITY_MASK), layers=("hidden",)),
              claims=(better("hidden_small_fraction", "more hidden weights are near zero"),
                      better("hidden_dead_units", "more hidden units are driven to zero"))),
        entry("Sparsity-aware unlearning (scheduled L1)", "scheduled L1 5e-4 -> 0 linear (conv+hidden)",
              net=_scheduled_l1_net, callbacks=_scheduled_l1_schedule,
              claims=(better("hidden_small_fraction", "more hidden weights are near zero"),)),
        entry("TRP nuclear-norm regularization", "nuclear norm 1e-2 (conv trp + hidden)",
              **_kernel_hooks(_reg("keras_reg.regularizers.NuclearNormRegularizer", factor=1e-2)),
              claims=(better("hidden_rank_99", "the hidden kernel has a lower effective rank"),)),
        entry("Wasserstein regularization to initialization", "W2-to-init 1e2 (conv+hidden)",
              net=lambda ctx: _wasserstein_net(ctx, 1e2),
              claims=(better("reg_w2_to_init", "the kernels' value distributions stay closer to the initial ones"),)),
        entry("Dispersive Loss", "dispersive 0.5 (hidden)",
              after_hidden=lambda: _identity(_obj("keras_reg.regularizers.DispersiveRegularizer")(0.5)),
              claims=(better("reg_hidden_dispersion", "the hidden representations are more spread out"),)),
        entry("DM1 dispersive regularization", "DM1 dispersive 0.25 x 3 layers (conv0, conv1, hidden)",
              after_conv=lambda i: _identity(_obj("keras_reg.regularizers.DispersiveRegularizer")(0.25)),
              after_hidden=lambda: _identity(_obj("keras_reg.regularizers.DispersiveRegularizer")(0.25)),
              claims=(better("reg_hidden_dispersion", "the hidden representations are more spread out"),
                      better("reg_conv_dispersion", "the conv representations are more spread out"))),
        entry("IDF-aware FLOPS", "FLOPS 1e-2 (hidden activations)",
              after_hidden=lambda: _identity(_obj("keras_reg.regularizers.FLOPSRegularizer")(1e-2)),
              claims=(better("reg_hidden_flops", "fewer hidden units are active across the test samples"),)),
    ),
    metrics=("test_acc", "hidden_gram_error", "conv_gram_error", "reg_hidden_offdiag", "reg_filter_norm_error",
             "hidden_small_fraction", "hidden_dead_units", "conv_dead_filters", "hidden_rank_99", "reg_w2_to_init",
             "reg_hidden_dispersion", "reg_conv_dispersion", "reg_hidden_flops"),
    note="Kernel penalties go on conv0, conv1 and the hidden Dense (the logits are left free). Coefficients: papers' "
         "values are for 10^4-10^5 steps; here there are 32, so the weak ones are scaled up so that the penalty's "
         "gradient is not orders of magnitude below the loss's: BigGAN beta 1e-4 -> 1e-2; SO and the filter-bank "
         "orthonormality 1e-2 (same Gram penalty; the latter on the conv filter banks only, as in Xie et al.); SRIP "
         "0.1 (Bansal et al.'s starting coefficient); SORSA gamma 1e-3 -> 1e-1, on the hidden kernel itself (no SVD "
         "split: the sweep net is not a PEFT adapter); Norm Loss 1e-2; group lasso 1e-3 (docstring default); "
         "MaskSparsity 1e-3 on a fixed half of the hidden units (at random init units are exchangeable, so a fixed "
         "half stands in for the mask of a first global sparsity pass, which is not run); scheduled L1: Jia et al.'s "
         "gamma 5e-4 decayed linearly to 0 over the epochs, trained from scratch (no forget set: measured as a "
         "sparsifier); TRP nuclear norm 3e-4 -> 1e-2 (no periodic truncated-SVD step); Wasserstein-to-init: the "
         "penalty is a mean over the n values, so the coefficient 1e2 makes its per-weight gradient comparable to "
         "the loss's. Dispersive: lambda 0.5 tau 1 (Wang & He) on the post-ReLU hidden features; DM1: the same loss "
         "on several intermediate embeddings (post-ReLU conv0, conv1, hidden), 0.25 each (DM1's weights are not in "
         "the abstract). IDF-aware FLOPS: lambda 1e-2 (no warm-up) on the hidden activations taken as the "
         "'vocabulary' weights, idf=None (plain FLOPS on the raw weights, as the authors' flops_value; no retrieval "
         "score to carry the IDF).",
)


# -- group 2: anchor regularizers when fine-tuning a pre-trained network on a new task ----------------------------

TASK_A = (0, 1, 2, 3, 4)  # the previous task (the anchor's); task B is the other five classes
PRETRAIN_EPOCHS = 3
ALL_KERNELS = KERNELS + ("logits",)


def _task(x, y, old):
    keep = np.isin(np.asarray(y), TASK_A) == old
    return x[keep], y[keep]


def _fit(net, ctx, x, y, epochs):
    import keras

    net.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=epochs, batch_size=128, verbose=0)


def _finetune_net(ctx, penalty=None):
    """Pre-trains sweep_cnn on task A (seeded by the runner: every arm gets the same pre-trained weights), then returns
    a copy with `penalty(ctx, layer name) -> regularizer or None` on its kernels, to be fine-tuned on task B."""
    x_a, y_a = _task(ctx.data.x_train, ctx.data.y_train, old=True)
    base = sweep_cnn(ctx)
    _fit(base, ctx, x_a, y_a, PRETRAIN_EPOCHS)
    ctx.extra["pretrained"] = {name: np.array(base.get_layer(name).kernel) for name in ALL_KERNELS}
    ctx.extra["base"] = base
    hook = (lambda name: {"kernel_regularizer": penalty(ctx, name)}) if penalty else (lambda name: {})
    net = sweep_cnn(ctx, conv=lambda i: hook(f"conv{i}"), dense=hook)
    net.set_weights(base.get_weights())
    return net


def _l2_anchor(ctx, name):
    return _obj("keras_reg.regularizers.L2AnchorRegularizer")(1e-2, anchor=ctx.extra["pretrained"][name])


def _ewc(ctx, name):
    import keras

    if "fisher" not in ctx.extra:  # the diagonal empirical Fisher of task A at the pre-trained weights
        base = ctx.extra["base"]
        x_a, y_a = _task(ctx.data.x_train, ctx.data.y_train, old=True)
        fisher = _obj("keras_reg.regularizers.estimate_diagonal_fisher")(
            base, (x_a[:256], y_a[:256]), keras.losses.SparseCategoricalCrossentropy(from_logits=True), batch_size=64)
        by_path = {v.path: f for v, f in zip(base.trainable_variables, fisher)}
        ctx.extra["fisher"] = {n: by_path[base.get_layer(n).kernel.path] for n in ALL_KERNELS}
    return _obj("keras_reg.regularizers.EWCRegularizer")(100.0, anchor=ctx.extra["pretrained"][name],
                                                        fisher=ctx.extra["fisher"][name])


def _repulsion(ctx, name):
    if "negative" not in ctx.extra:  # theta_N: the pre-trained net adapted one more epoch to the unwanted task A
        import keras

        adapted = keras.models.clone_model(ctx.extra["base"])
        adapted.set_weights(ctx.extra["base"].get_weights())
        _fit(adapted, ctx, *_task(ctx.data.x_train, ctx.data.y_train, old=True), 1)
        ctx.extra["negative"] = {n: np.array(adapted.get_layer(n).kernel) for n in ALL_KERNELS}
    return _obj("keras_reg.regularizers.RepulsionRegularizer")(1e-5, anchor=ctx.extra["negative"][name],
                                                              form="inverse")


def _task_b_x(ctx, x):
    return _task(x, ctx.data.y_train, old=False)[0]


def _task_b_y(ctx, y):
    return _task(ctx.data.x_train, y, old=False)[1]


def _old_test(r):
    keep = np.isin(r.ctx.data.y_test, TASK_A)
    return r.ctx.data.x_test[keep], r.ctx.data.y_test[keep]


@metric("reg_old_task_acc", "test accuracy on the previous task's classes (0-4) after fine-tuning on classes 5-9",
        pct=True)
def _old_task_acc(r):
    from benchmarks import common

    return common.accuracy(r.net, *_old_test(r))


@metric("reg_old_task_forgetting", "1 - reg_old_task_acc: how much of the previous (unwanted) task is unlearned",
        pct=True)
def _old_task_forgetting(r):
    return 1.0 - r.values["reg_old_task_acc"] if "reg_old_task_acc" in r.values else 1.0 - _old_task_acc(r)


@metric("reg_anchor_distance", "||theta - theta_pretrained|| over all kernels after fine-tuning", higher=False)
def _anchor_distance(r):
    return float(np.sqrt(sum(np.sum((np.asarray(r.net.get_layer(n).kernel, "float64") - w) ** 2)
                             for n, w in r.ctx.extra["pretrained"].items())))


def _finetune_arm(penalty=None):
    return {"net": lambda ctx: _finetune_net(ctx, penalty), "inputs": _task_b_x, "labels": _task_b_y}


def _finetune_plain():
    from benchmarks import registry

    return registry.arm("plain", validate=False, **_finetune_arm())


group(
    "sweep_regularizers_finetune",
    "Anchor regularizers: fine-tuning a pre-trained network on a new task, an anchor towards the pre-trained weights "
    "keeps more of the previous task (EWC, L2-anchor); a repulsion from a model adapted to unwanted data unlearns it.",
    plain=_finetune_plain(),
    entries=(
        entry("EWC", "EWC lambda 100 (Fisher of task A)", **_finetune_arm(_ewc),
              claims=(better("reg_old_task_acc", "keeps more of the previous task's accuracy"),
                      better("reg_anchor_distance", "stays closer to the pre-trained weights"))),
        entry("L2-anchor (L2 towards previous weights)", "L2-anchor 1e-2", **_finetune_arm(_l2_anchor),
              claims=(better("reg_old_task_acc", "keeps more of the previous task's accuracy"),
                      better("reg_anchor_distance", "stays closer to the pre-trained weights"))),
        entry("Parameter repulsion (Adapt then Unlearn)", "repulsion inverse 1e-5 (from task-A-adapted weights)",
              **_finetune_arm(_repulsion),
              claims=(better("reg_old_task_forgetting", "unlearns more of the unwanted task"),)),
    ),
    metrics=("test_acc", "reg_old_task_acc", "reg_old_task_forgetting", "reg_anchor_distance"),
    net_desc="sweep_cnn pre-trained 3 epochs on classes 0-4 of the 1,000 training images (in the arm's build), then "
             "fine-tuned on classes 5-9; test accuracy over all 10 classes",
    note="Not the papers' settings: EWC / L2-anchor are studied on sequences of tasks with pre-trained ViTs (Smith et "
         "al.), Adapt-then-Unlearn on GANs. Here two tasks of 5 Fashion-MNIST classes each, fine-tuning for 4 epochs "
         "(~16 steps). EWC: lambda 100 (the order of EWC's MNIST values), empirical Fisher on 256 task-A images at "
         "the pre-trained weights; L2-anchor 1e-2 (docstring default); both on all four kernels. Repulsion: theta_N = "
         "the pre-trained net adapted one more epoch on task A (the unwanted data), fine-tuning from the pre-trained "
         "weights on task B with the authors' inverse form gamma / mean((theta - theta_N)^2) per kernel; gamma 1e-5 "
         "puts the initial penalty near 1 for the small distance one epoch of adaptation gives (the paper's gamma is "
         "for a GAN). The plain arm of this group is the same fine-tuning with no penalty. Observed in the first "
         "full run (not changed after it): with one shared 10-way head (class-incremental), plain fine-tuning "
         "forgets task A completely, the regime where parameter anchors are known to help least; a multi-head "
         "(task-incremental) evaluation would be the fairer test.",
)

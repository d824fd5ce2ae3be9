"""Sweep groups: layers (see benchmarks/sweep.py).

Five groups, one per kind of network a layer needs:

- `sweep_layers`: activations, conv/dense replacements, wrappers and inserted layers in `sweep_cnn`'s slots;
- `sweep_layers_residual`: residual-branch layers (Fixup scalars, Stable ResNet scaling, PAT's masks), on
  `sweep_cnn` with a stack of residual Dense blocks after its hidden layer (the plain arm has the same stack);
- `sweep_layers_finetune`: techniques that adapt a pre-trained network (SORSA, Effort, mask tuning, NMTune),
  pre-trained on MNIST digits inside the build and fine-tuned on Fashion-MNIST, against full fine-tuning;
- `sweep_token_layers` / `sweep_token_steps`: attention and token-sequence layers, on a one-block transformer over
  the 28 image rows as tokens (the second holds AT / iAT, a training step, so it is left out of the cost table);
- `sweep_embedding_layers`: the mini-batch aware embedding L2, on a bag of discrete patch tokens.

The metrics defined here are prefixed `layers_`.
"""


import numpy as np

from benchmarks import common
from benchmarks.common import layer_outputs
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import HIDDEN
from benchmarks.sweep import LEARNING_RATE
from benchmarks.sweep import NET_DESC
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep import sweep_cnn

# -- helpers ----------------------------------------------------------------------------------------------------


def _L(name):
    """A keras_reg.layers class by name (looked up when the arm is built)."""
    return _obj(f"keras_reg.layers.{name}")


def _core(net, name):
    """The Dense/Conv layer called `name`, or the layer a wrapper of that name wraps."""
    layer = net.get_layer(name)
    return getattr(layer, "layer", layer)


def _kernel(net, name):
    """The deployed kernel of layer `name` (a wrapper's or a reparameterized layer's `folded_kernel()`)."""
    layer = net.get_layer(name)
    if hasattr(layer, "folded_kernel"):
        return np.asarray(layer.folded_kernel(), "float64")
    return np.asarray(_core(net, name).kernel, "float64")


def _float_kernel(net, name):
    """The trained float kernel of layer `name`: the wrapped layer's own kernel (before any quantization or
    binarization), else the deployed one (layers whose kernel is a product of factors)."""
    core = _core(net, name)
    if getattr(core, "kernel", None) is not None:
        return np.asarray(core.kernel, "float64")
    return _kernel(net, name)


def _every(make):
    """An activation hook giving every slot (conv0, conv1, hidden) the layer `make(name)` (named act_<slot>)."""
    return make


def _relu(name):
    return _obj("keras.layers.ReLU")(name=f"act_{name}")


def _only(slot, make):
    """An activation hook: `make(name)` in `slot`, ReLU elsewhere."""
    return lambda name: make(name) if name == slot else _relu(name)


# -- metrics of the plain-CNN group -------------------------------------------------------------------------------


@metric("layers_conv_orth_error", "max over the two conv layers of max |sigma - 1| of the circular, stride-1 "
        "convolution operator of the deployed kernel (0: orthogonal / isometric)", higher=False)
def _conv_orth_error(r):
    from keras_reg.functional import circular_conv_singular_values

    errors = []
    for i in range(2):
        size = int(r.net.get_layer(f"conv{i}").input.shape[1])
        sv = circular_conv_singular_values(_kernel(r.net, f"conv{i}").astype("float32"), size)
        errors.append(float(np.max(np.abs(np.asarray(sv) - 1.0))))
    return max(errors)


@metric("layers_hidden_first16_acc", "test accuracy when only the first 16 of the 64 hidden units are kept "
        "(the others zeroed before the logits)", pct=True)
def _first16(r):
    h = layer_outputs(r.net, "act_hidden", r.ctx.data.x_test)
    h[:, 16:] = 0.0
    logits = np.asarray(r.net.get_layer("logits")(h))
    return float(np.mean(logits.argmax(-1) == r.ctx.data.y_test))


@metric("layers_hidden_act_zero", "fraction of exactly-zero hidden activations (after the hidden activation and "
        "any layer inserted after it) on the test set", pct=True)
def _hidden_zero(r):
    return float(np.mean(_logits_input(r.net, r.ctx.data.x_test) == 0.0))


def _logits_input(net, x):
    import keras

    return keras.Model(net.inputs, net.get_layer("logits").input).predict(x, batch_size=500, verbose=0)


@metric("layers_conv_active_filters", "mean over test images and both conv blocks of the fraction of filters "
        "whose activation map is not all zero (the per-input share of filters a dynamic pruner must compute)",
        higher=False, pct=True)
def _active_filters(r):
    fractions = []
    for i in range(2):
        a = layer_outputs(r.net, f"act_conv{i}", r.ctx.data.x_test)
        fractions.append(np.mean(np.abs(a).max(axis=(1, 2)) > 0.0))
    return float(np.mean(fractions))


@metric("layers_conv1_energy_corr", "mean |correlation| between the squared responses (energies) of different "
        "channels of the second conv block's activation, over test positions (the dependence divisive "
        "normalization removes)", higher=False)
def _energy_corr(r):
    a = layer_outputs(r.net, "act_conv1", r.ctx.data.x_test[:500])
    e = a.reshape(-1, a.shape[-1]).astype("float64") ** 2
    e = e[:, e.std(axis=0) > 0]
    c = np.corrcoef(e, rowvar=False)
    off = c[~np.eye(len(c), dtype=bool)]
    return float(np.mean(np.abs(off)))


def _kurtosis(w):
    w = w.ravel()
    z = w - w.mean()
    return float(np.mean(z**4) / np.mean(z**2) ** 2)


@metric("layers_kurtosis_gap", "mean over conv1, hidden and logits of |Kurt(W) - 1.8| of the float kernel "
        "(1.8: the uniform distribution EQ-Net's WDR loss aims at)", higher=False)
def _kurtosis_gap(r):
    return float(np.mean([abs(_kurtosis(_float_kernel(r.net, n)) - 1.8)
                          for n in ("conv1", "hidden", "logits")]))


@metric("layers_hidden_sigma_dev", "|sigma_max([W; b]) - 1| of the hidden Dense layer (kernel with the bias as "
        "one more row)", higher=False)
def _sigma_dev(r):
    w = np.concatenate([_float_kernel(r.net, "hidden"), np.asarray(_core(r.net, "hidden").bias)[None]], 0)
    return float(abs(np.linalg.norm(w, 2) - 1.0))


# -- the plain-CNN group ----------------------------------------------------------------------------------------


def _shaped(name):
    """BatchNorm then the fixed-gain tanh of layer l (conv0 -> 1, conv1 -> 2, hidden -> 3)."""
    import keras

    depth = {"conv0": 1, "conv1": 2, "hidden": 3}[name]
    return keras.Sequential([keras.layers.BatchNormalization(),
                             _L("ActivationShaping")("tanh", layer_index=depth, exponent=0.4)], name=f"act_{name}")


def _siren_init(i_or_name):
    first = i_or_name == 0
    return {"kernel_initializer": _obj("keras_reg.initializers.SirenUniform")(w0=30.0, is_first=first)}


def _ftwt(i, filters):
    import keras

    conv = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")
    # the code averages the predictor loss over the L = 2 gated layers
    return _L("FTWTGateWrapper")(conv, mass_threshold=0.9, loss_weight=0.5, name=f"conv{i}")


def _elastic(layer):
    # 4-bit weights everywhere; WDR (kurtosis 0.1 averaged over the regularized layers) on all but the first layer
    rate = 0.0 if layer.name == "conv0" else 0.1 / 3
    return _L("ElasticQuantWrapper")(layer, bits=4, kurtosis_rate=rate, name=layer.name)


def _spectral(layer):
    return _obj("keras_reg.regularizers.SpectralRegularizationWrapper")(layer, factor=1e-3, name=layer.name)


def _reste(o_end):
    # binary conv1 and hidden (1w1a); the first conv and the classifier stay real-valued, the usual BNN practice
    def wrap(layer):
        if layer.name in ("conv1", "hidden"):
            return _L("ReSTEBinaryWrapper")(layer, threshold=1.5, binarize_inputs=True, name=layer.name)
        return layer

    def callbacks(ctx, model):
        schedule = _obj("keras_reg.callbacks.RegularizationSchedule")
        o = _obj("keras_reg.functional.binary.reste_o_schedule")
        return [schedule(f"{name}.o", lambda e: o(e, ctx.epochs, o_end)) for name in ("conv1", "hidden")]

    return {"wrap": wrap, "callbacks": callbacks}


def _tropical_rational_cnn(ctx):
    """The sweep CNN with tropical rational activations, each seeded explicitly: with seed=None the layer's one
    default RandomNormal gives p, c, q and d the same values under a global seed, so R(x) = 0 everywhere."""
    slot = {"conv0": 0, "conv1": 1, "hidden": 2}
    return sweep_cnn(ctx, activation=lambda n: _L("TropicalRationalActivation")(
        degree=3, seed=10 * ctx.seed + 4 * slot[n], name=f"act_{n}"))


def _relative(baseline):
    """A claim against another arm of the group (not the plain one)."""
    from benchmarks import registry

    return lambda metric_name, text: (
        lambda arm_name: registry.better(metric_name, arm_name, baseline, text))


group(
    "sweep_layers",
    "A layer in its slot of the sweep CNN keeps the accuracy and does what its paper says to the network.",
    entries=(
        entry("Activation shaping layer (fixed depth gain)", "BN + shaped tanh, exponent 0.4 (all slots)",
              activation=_shaped, conv=lambda i: {"kernel_initializer": "orthogonal"},
              dense=lambda name: {"kernel_initializer": "orthogonal"}),
        entry("BCOP orthogonal convolution", "BCOP orthogonal conv, circular (both convs)",
              conv_layer=lambda i, f: _L("OrthogonalConv2D")(f, 3, padding="circular", name=f"conv{i}"),
              claims=(better("layers_conv_orth_error", "the conv operators are orthogonal (isometries)"),)),
        entry("Deep linear over-parameterization (collapsible layer)", "over-parameterized hidden, depth 3",
              hidden_layer=lambda units: _L("OverparameterizedDense")(units, depth=3, name="hidden"),
              claims=(better("train_loss", "the factored kernel trains faster (lower final training loss)"),)),
        entry("Dice", "Dice (hidden)", activation=_only("hidden", lambda n: _L("Dice")(name=f"act_{n}")),
              claims=(better("test_acc", "Dice raises the test accuracy over the ReLU"),)),
        entry("EQ-Net elastic quantization + WDR", "EQ-Net 4-bit weights + WDR kurtosis 0.1 (all layers)",
              wrap=_elastic,
              claims=(better("layers_kurtosis_gap", "WDR moves the kernels' kurtosis towards 1.8 (uniform)"),)),
        entry("Fourier activation", "Fourier activation, 4 harmonics (all slots)",
              activation=_every(lambda n: _L("FourierActivation")(degree=4, name=f"act_{n}"))),
        entry("FTWT self-supervised mask predictor", "FTWT gates, heat mass 0.9 (both convs)", conv_layer=_ftwt,
              claims=(better("layers_conv_active_filters", "fewer filters are active per input"),)),
        entry("GDN", "GDN (both conv blocks)",
              activation=lambda n: (_L("GeneralizedDivisiveNormalization")(name=f"act_{n}") if n != "hidden"
                                    else _relu(n)),
              claims=(better("layers_conv1_energy_corr", "the channels' energies are less correlated"),)),
        entry("Hard ASH", "Hard ASH z_k=1, alpha=3 (hidden)",
              activation=_only("hidden", lambda n: _L("HardASH")(z_k=1.0, alpha=3.0, name=f"act_{n}")),
              claims=(better("layers_hidden_act_zero", "the hidden activations are sparser"),)),
        entry("Hermite activation", "Hermite activation, degree 3 (all slots)",
              activation=_every(lambda n: _L("HermiteActivation")(degree=3, name=f"act_{n}"))),
        entry("LatentQuant-QLAE", "latent quantization, 10 values (hidden, weights 0.01/0.01)",
              activation=_only("hidden", lambda n: _L("LatentQuantization")(
                  num_values=10, quantization_weight=0.01, commitment_weight=0.01, name=f"act_{n}"))),
        entry("Mish", "Mish (all slots)", activation=_every(lambda n: _L("Mish")(name=f"act_{n}")),
              claims=(better("test_acc", "Mish raises the test accuracy over the ReLU"),)),
        entry("Nested Dropout", "nested dropout, half-Gaussian std 10 (hidden)",
              after_hidden=lambda: _L("NestedDropout")(stddev=10.0),
              claims=(better("layers_hidden_first16_acc", "the first 16 hidden units alone classify better"),)),
        entry("Representation penalty", "representation penalty L1 1e-4 (hidden)",
              after_hidden=lambda: _obj("keras_reg.losses.RepresentationPenalty")(
                  _obj("keras.regularizers.L1")(1e-4), weight=1.0),
              claims=(better("layers_hidden_act_zero", "the L1 penalty makes the hidden representation sparser"),)),
        entry("ReSTE", "binary STE, o=1 (conv1, hidden)", **_reste(1.0)),
        entry("ReSTE", "ReSTE o 1->3 (conv1, hidden)", **_reste(3.0),
              claims=(_relative("binary STE, o=1 (conv1, hidden)")(
                  "test_acc", "ReSTE's rectified estimator beats the o=1 (clipped STE) binary network"),)),
        entry("SIREN sine activation", "sine w0=30 + SIREN init (all slots)",
              activation=_every(lambda n: _L("Sine")(w0=30.0, name=f"act_{n}")), conv=_siren_init,
              dense=lambda name: _siren_init(name) if name == "hidden" else {}),
        entry("Spectral regularization (continual learning)", "spectral reg 1e-3, k=2 (all layers)",
              wrap=_spectral,
              claims=(better("layers_hidden_sigma_dev", "the hidden layer's top singular value is nearer 1"),)),
        entry("Tropical activation", "tropical max-plus, degree 3 (all slots)",
              activation=_every(lambda n: _L("TropicalActivation")(degree=3, name=f"act_{n}"))),
        entry("Tropical activation", "tropical rational, degree 3 (all slots)", net=_tropical_rational_cnn),
    ),
    metrics=("test_acc", "train_loss", "layers_conv_orth_error", "layers_kurtosis_gap", "layers_conv_active_filters",
             "layers_conv1_energy_corr", "layers_hidden_act_zero", "layers_hidden_first16_acc",
             "layers_hidden_sigma_dev"),
    note="Hyper-parameters are the papers' or the docstrings' defaults: shaping exponent 0.4 with BatchNorm and "
         "orthogonal kernels (the paper's deep BN-MLP has far more layers than these 3; no depth effect can show "
         "here); BCOP with circular padding (exact orthogonality); depth-3 factorization (Arora et al. use depth "
         "2-4); Dice and Hard ASH in the dense layer as in their MLPs; EQ-Net at a fixed 4 bits (the elastic "
         "sandwich training is another row) with the WDR rate 0.1 spread over the 3 regularized layers; FTWT with "
         "a 0.9 heat mass (the code's 1.0 keeps all but dead filters) and loss 1/L; GDN replacing the conv "
         "nonlinearities as in Balle et al.; nested dropout with the paper's CIFAR-10 std 10 on the 64 hidden "
         "units; latent quantization on the hidden layer (linear pre-activation, replacing the ReLU; its "
         "disentanglement claim needs generative factors, so only the accuracy is claimed); the representation "
         "penalty (a generic wrapper with no paper of its own) carries an L1 activity penalty 1e-4 on the hidden "
         "representation; ReSTE binarizes conv1 and hidden (1w1a, t=1.5) with o raised 1->3 by the authors' cosine "
         "schedule, against the same binary network at o=1; SIREN w0=30 with its initialization (an image "
         "classifier, not the paper's implicit representations); spectral regularization 1e-3 on every layer "
         "(one task here, not the paper's continual sequence: its plasticity claim is not tested, only that sigma "
         "stays near 1); the polynomial-paper activations at their default degrees.",
)


# -- residual group: sweep_cnn + a stack of residual Dense blocks after the hidden layer ---------------------------

BLOCKS = 4


def residual_cnn(ctx, block=None, callbacks_hint=None):
    """sweep_cnn with BLOCKS residual blocks h <- h + Dense(64)(ReLU(Dense(64)(h))) after its hidden activation;
    `block(l, h) -> (branch_output, joined)` replaces block l (1-based). The stream before and after the stack is
    named "res_in" and "res_out", each branch's output "branch{l}"."""
    import keras

    def stack():
        def apply(h):
            h = keras.layers.Identity(name="res_in")(h)
            for l in range(1, BLOCKS + 1):
                if block is None:
                    r = keras.layers.Dense(HIDDEN, activation="relu", name=f"res{l}_a")(h)
                    r = keras.layers.Identity(name=f"branch{l}")(keras.layers.Dense(HIDDEN, name=f"res{l}_b")(r))
                    h = keras.layers.Add(name=f"join{l}")([h, r])
                else:
                    h = block(ctx, l, h)
            return keras.layers.Identity(name="res_out")(h)

        return apply

    return sweep_cnn(ctx, after_hidden=stack)


def _fixup_block(ctx, l, h):
    """Fixup's branch: scalar biases before each layer and activation, the last layer zero-initialised, a scalar
    multiplier and bias at its end; the first layer's He init scaled by L^(-1/(2m-2)) = L^(-1/2) (m = 2)."""
    import keras

    bias, mult = _L("ScalarBias"), _L("ScalarMultiplier")
    init = keras.initializers.VarianceScaling(2.0 / BLOCKS, "fan_in", "truncated_normal")
    r = keras.layers.Dense(HIDDEN, use_bias=False, kernel_initializer=init, name=f"res{l}_a")(bias()(h))
    r = keras.layers.ReLU()(bias()(r))
    r = keras.layers.Dense(HIDDEN, use_bias=False, kernel_initializer="zeros", name=f"res{l}_b")(bias()(r))
    r = keras.layers.Identity(name=f"branch{l}")(bias()(mult()(r)))
    return keras.layers.Add(name=f"join{l}")([h, r])


def _stable_block(ctx, l, h):
    import keras

    r = keras.layers.Dense(HIDDEN, activation="relu", name=f"res{l}_a")(h)
    r = keras.layers.Identity(name=f"branch{l}")(keras.layers.Dense(HIDDEN, name=f"res{l}_b")(r))
    return _L("StableResidual")(block_index=l, depth=BLOCKS, schedule="uniform", name=f"join{l}")([h, r])


def _pat_block(ctx, l, h):
    """Each branch goes through its own hybrid sparsification module and the one shared channel mask."""
    import keras

    from benchmarks import registry

    if "pat_mask" not in ctx.extra:
        # keep 48 of the 64 channels (75%), the schedule over the whole run
        ctx.extra["pat_mask"] = _L("PATChannelMask")(keep_units=48, total_steps=max(2, registry._steps(ctx)),
                                                     name="pat_mask")
    r = keras.layers.Dense(HIDDEN, activation="relu", name=f"res{l}_a")(h)
    r = keras.layers.Dense(HIDDEN, name=f"res{l}_b")(r)
    r = keras.layers.Identity(name=f"branch{l}")(ctx.extra["pat_mask"](
        _L("HybridSparsification")(rank=16, identity_weight=1.0)(r)))
    return keras.layers.Add(name=f"join{l}")([h, r])


@metric("layers_res_growth", "||res_out|| / ||res_in||: growth of the residual stream's norm through the stack of "
        "residual blocks (mean over test images)", higher=False)
def _res_growth(r):
    import keras

    model = keras.Model(r.net.inputs, [r.net.get_layer("res_in").output, r.net.get_layer("res_out").output])
    a, b = model.predict(r.ctx.data.x_test, batch_size=500, verbose=0)
    return float(np.mean(np.linalg.norm(b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)))


@metric("layers_res_branch_channels", "fraction of the residual branches' output channels that are not zero on "
        "every test image (the channels a pruner would have to keep)", higher=False, pct=True)
def _branch_channels(r):
    import keras

    model = keras.Model(r.net.inputs, [r.net.get_layer(f"branch{l}").output for l in range(1, BLOCKS + 1)])
    outs = model.predict(r.ctx.data.x_test, batch_size=500, verbose=0)
    return float(np.mean([np.mean(np.abs(o).max(axis=0) > 0.0) for o in outs]))


def _pat_callbacks(ctx, model):
    return [_L("PATMaskSchedule")()]


group(
    "sweep_layers_residual",
    "A residual-branch layer keeps the accuracy of a residual stack and does what its paper says to the stream.",
    entries=(
        entry("Fixup scalar bias / multiplier layers", "Fixup scalar biases + multiplier, zero-init last layer",
              block=_fixup_block),
        entry("Stable ResNet branch scaling", f"Stable ResNet uniform 1/sqrt({BLOCKS})", block=_stable_block,
              claims=(better("layers_res_growth", "the residual stream grows less through the stack"),)),
        entry("PAT identity loss and sparsification", "PAT HSM rank 16 + shared mask keeping 48/64",
              block=_pat_block, callbacks=_pat_callbacks,
              claims=(better("layers_res_branch_channels", "the branches use only the kept channels"),)),
    ),
    metrics=("test_acc", "layers_res_growth", "layers_res_branch_channels"),
    net=residual_cnn,
    net_desc=NET_DESC + f"; then {BLOCKS} residual blocks h + Dense(64)(ReLU(Dense(64)(h))) before the logits",
    note=f"Both arms have {BLOCKS} residual Dense blocks after the hidden layer, without normalization. Fixup: "
         "one scalar bias before each layer and activation of a branch, a scalar multiplier and bias at its end, "
         "the last layer zero-initialised and the first He-initialised scaled by L^-1/2 (m = 2 layers per "
         "branch), as in the paper; its claim (training deep nets without normalization) needs far more depth, so "
         "only the accuracy is claimed. Stable ResNet: the paper's uniform scaling 1/sqrt(L). PAT works on an "
         "LLM's residual stream; here each branch's output goes through its own hybrid sparsification module "
         "(rank 16 of 64; the code's 200 exceeds the width) and one shared mask keeping 48 of 64 channels "
         "(the schedule spans the run; mask frozen from 80%); the pruned model is the inference model.",
)


# -- fine-tuning group: pre-trained on MNIST digits, fine-tuned on Fashion-MNIST -------------------------------------

_PRETRAINED = {}
PRETRAIN_EPOCHS = 2


def _pretrained(ctx):
    """The sweep CNN's conv and hidden weights after PRETRAIN_EPOCHS epochs on 1,000 MNIST digits (cached per seed
    and data size, so every arm of a seed starts from the same network)."""
    import keras

    from benchmarks import registry

    key = (ctx.seed, ctx.data_dir, len(ctx.data.y_train))
    if key not in _PRETRAINED:
        digits = common.load_setting(common.Setting("mnist", n_train=1000, n_test=100), ctx.data_dir)
        dctx = registry.Context(data=digits, seed=ctx.seed, setting=None)
        net = sweep_cnn(dctx)
        net.compile(keras.optimizers.Adam(LEARNING_RATE),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
        net.fit(digits.x_train, digits.y_train, batch_size=128, epochs=PRETRAIN_EPOCHS, verbose=0, shuffle=True)
        _PRETRAINED[key] = {n: [w.copy() for w in net.get_layer(n).get_weights()] for n in ("conv0", "conv1", "hidden")}
    return _PRETRAINED[key]


def finetune_cnn(ctx, mode="full"):
    """The sweep CNN started from the MNIST-pre-trained conv and hidden layers, a fresh logits layer; `mode` picks
    what trains: "full" (everything, the plain arm), "sorsa"/"effort" (an SVD-split hidden layer and the head,
    convs frozen), "mask" (masks over the frozen conv and hidden kernels, the head), "nmtune" (a 2-layer MLP head
    with NMTune's regularizers over the frozen backbone's hidden features)."""
    import keras

    weights = _pretrained(ctx)
    ctx.extra["hidden0"] = weights["hidden"][0].astype("float64")

    def pretrained_dense():
        dense = keras.layers.Dense(HIDDEN, name="hidden")
        dense.build((None, weights["hidden"][0].shape[0]))
        dense.set_weights(weights["hidden"])
        return dense

    hidden_layer = None
    if mode == "sorsa":
        hidden_layer = lambda units: _L("SVDSplitDense").from_dense(
            pretrained_dense(), rank=8, train="principal", orthonormal_weight=1e-3, name="hidden")
    elif mode == "effort":
        hidden_layer = lambda units: _L("SVDSplitDense").from_dense(
            pretrained_dense(), rank=HIDDEN - 8, train="residual", orthonormal_weight=1e-3, norm_weight=1e-3,
            name="hidden")
    wrap = None
    if mode == "mask":
        wrap = lambda layer: (_L("MaskTuningWrapper")(layer, name=layer.name) if layer.name != "logits"
                              else layer)
    after_hidden = None
    if mode == "nmtune":
        def after_hidden():
            def head(f):
                z = keras.layers.Dense(HIDDEN, activation="relu", name="nm_mlp0")(f)
                z = keras.layers.Dense(HIDDEN, name="nm_mlp1")(z)
                return _obj("keras_reg.losses.NMTuneRegularization")(1.0, 0.01, 0.01, k=5, name="nmtune")([f, z])

            return head

    net = sweep_cnn(ctx, hidden_layer=hidden_layer, wrap=wrap, after_hidden=after_hidden)
    for name in ("conv0", "conv1", "hidden"):
        layer = _core(net, name)
        if mode in ("sorsa", "effort") and name == "hidden":
            continue
        layer.set_weights(weights[name])
        if mode in ("sorsa", "effort", "nmtune"):
            layer.trainable = False
    return net


def _full_batches(ctx, a):
    """`a` with its first samples repeated up to a multiple of the batch size: NMTuneRegularization fails on a
    partial last batch (its covariance term reshapes with the dynamic batch size, loses the static feature width
    and calls ops.eye(None)), so this arm trains on full batches only (1,024 = 1,000 + 24 repeats)."""
    extra = -len(a) % ctx.batch_size
    return np.concatenate([a, a[:extra]]) if extra else a


@metric("layers_ft_hidden_drift", "||W - W0||_F / ||W0||_F of the hidden kernel (merged for SVD-split layers) "
        "from its pre-trained value (the deployed kernel: merged for SVD-split layers, masked for mask tuning)", higher=False)
def _drift(r):
    layer = r.net.get_layer("hidden")
    w = np.asarray(layer.merged_kernel(), "float64") if hasattr(layer, "merged_kernel") else _kernel(r.net, "hidden")
    w0 = r.ctx.extra["hidden0"]
    return float(np.linalg.norm(w - w0) / np.linalg.norm(w0))


@metric("layers_ft_top5_sv_share", "share of the 5 largest singular values in the sum of the singular values of "
        "the test features entering the logits layer (NMTune's dominant-spectrum term raises it)")
def _top5(r):
    f = _logits_input(r.net, r.ctx.data.x_test).astype("float64")
    s = np.linalg.svd(f - f.mean(0), compute_uv=False)
    return float(s[:5].sum() / s.sum())


@metric("layers_ft_masked_fraction", "fraction of the conv and hidden kernel weights the learned mask removes "
        "(0 without a mask)", pct=True)
def _masked(r):
    layers = [r.net.get_layer(n) for n in ("conv0", "conv1", "hidden")]
    return float(np.mean([l.masked_fraction() if hasattr(l, "masked_fraction") else 0.0 for l in layers]))


group(
    "sweep_layers_finetune",
    "A fine-tuning layer keeps the accuracy of full fine-tuning and changes the pre-trained network as its paper "
    "says.",
    entries=(
        entry("SORSA", "SORSA rank 8, orthonormal 1e-3 (hidden; convs frozen)", mode="sorsa",
              claims=(better("layers_ft_hidden_drift", "the hidden kernel stays nearer its pre-trained value"),)),
        entry("EffortSVDResidual", "Effort residual 8 of 64, orthonormal + norm 1e-3 (hidden; convs frozen)",
              mode="effort",
              claims=(better("layers_ft_hidden_drift", "the hidden kernel stays nearer its pre-trained value"),)),
        entry("Regularized Mask Tuning", "mask tuning, scale 1e-2, threshold 5e-3, L2 1e-4 (convs, hidden)",
              mode="mask",
              claims=(better("layers_ft_masked_fraction", "the mask drops some pre-trained weights"),)),
        entry("NMTune feature regularizers", "NMTune MLP head, weights 1/0.01/0.01, k=5 (frozen backbone)",
              mode="nmtune", inputs=_full_batches, labels=_full_batches,
              claims=(better("layers_ft_top5_sv_share", "the dominant singular values of the features grow"),)),
    ),
    metrics=("test_acc", "layers_ft_hidden_drift", "layers_ft_masked_fraction", "layers_ft_top5_sv_share"),
    net=finetune_cnn, plain=None,
    net_desc=NET_DESC + f"; conv and hidden layers pre-trained {PRETRAIN_EPOCHS} epochs on 1,000 MNIST digits "
    "(Adam 2e-3, same seed), fresh logits",
    note="The plain arm is full fine-tuning of the MNIST-pre-trained sweep CNN on Fashion-MNIST; the papers adapt "
         "large pre-trained models (LLMs, CLIP, ViT), here a 2-epoch digit model stands in. SORSA trains the top "
         "8 singular triplets of the hidden kernel (orthonormal weight 1e-3, SORSA's gamma), Effort the 8 minor "
         "ones (the 56 principal frozen; its orthonormal and norm weights set to the same 1e-3, the code's values "
         "are not in our notes); both freeze the convs, as PEFT freezes the backbone. Mask tuning uses R-AMT's "
         "ViT-B/16 values (scale 1e-2, threshold 5e-3, L2 1e-4) on the conv and hidden kernels; its gradient "
         "dropout is another row. NMTune: a 2-layer MLP head over the frozen backbone's hidden features with the "
         "code's weights (1, 0.01, 0.01, k = 5) and no paired views, trained on full batches only (24 training "
         "images repeated: the component fails on a partial batch); its claim (undoing pre-training label "
         "noise) is not tested, only that its spectrum term acts.",
)


# -- token groups: a one-block transformer over the 28 image rows as tokens -----------------------------------------

TOKENS, WIDTH, HEADS = 28, 32, 4
TOKEN_DESC = (f"token net: the {TOKENS} image rows as tokens, Dense({WIDTH}) of [row pixels, one-hot position], "
              f"one post-LN transformer block (self-attention {HEADS} heads x {WIDTH // HEADS}, ReLU MLP 64), "
              "mean pooling over the tokens, Dense(10) 'logits'")


def _with_positions(t):
    from keras import ops

    eye = ops.eye(TOKENS, dtype=t.dtype)[None]
    return ops.concatenate([t, ops.tile(eye, [ops.shape(t)[0], 1, 1])], axis=-1)


def token_net(ctx, attention=None, after_encoder=None, pooling=None, softmax=False):
    """`attention()` replaces the block's MultiHeadAttention (keep the name "attention"); `after_encoder()` is a
    layer inserted on the encoded tokens (named "encoded"); `pooling(h)` replaces the mean over the tokens."""
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    h = keras.layers.Reshape((TOKENS, -1))(inputs)
    h = keras.layers.Dense(WIDTH, name="embed")(keras.layers.Lambda(_with_positions, name="positions")(h))
    attn = attention() if attention else keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name="attention")
    h = keras.layers.LayerNormalization(name="ln1")(h + attn(h, h))
    m = keras.layers.Dense(WIDTH, name="mlp1")(keras.layers.Dense(64, activation="relu", name="mlp0")(h))
    h = keras.layers.LayerNormalization(name="encoded")(h + m)
    if after_encoder:
        h = after_encoder()(h)
    h = pooling(h) if pooling else keras.layers.GlobalAveragePooling1D(name="pool")(h)
    outputs = keras.layers.Dense(ctx.data.num_classes, name="logits")(h)
    if softmax:
        outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(outputs)
    return keras.Model(inputs, outputs, name="token_net")


def _attention_probs(r, n=300):
    """The attention weights (n, heads, T, T) of the layer "attention" on the first n test images."""
    import keras

    layer = r.net.get_layer("attention")
    x = keras.Model(r.net.inputs, layer.input).predict(r.ctx.data.x_test[:n], batch_size=500, verbose=0) \
        if not isinstance(layer.input, (list, tuple)) else None
    if x is None:
        x = keras.Model(r.net.inputs, r.net.get_layer("embed").output).predict(r.ctx.data.x_test[:n], verbose=0)
    _, scores = layer(x, x, return_attention_scores=True)
    return np.asarray(scores, "float64")


@metric("layers_token_entropy_out_band", "fraction of (test image, head, query) whose attention entropy lies "
        "outside [0.3, 0.7] log T (the band the entropy regularizer starts from: threshold 0.5, tolerance 0.2)",
        higher=False, pct=True)
def _out_band(r):
    p = _attention_probs(r)
    h = -np.sum(p * np.log(p + 1e-9), axis=-1) / np.log(p.shape[-1])
    return float(np.mean((h < 0.3) | (h > 0.7)))


@metric("layers_token_logit_range", "mean over (test image, head, query) of max - min attention logit, recovered "
        "as log(max p) - log(min p) from the attention weights (the logit growth QK-norm bounds)", higher=False)
def _logit_range(r):
    p = np.maximum(_attention_probs(r), 1e-300)
    return float(np.mean(np.log(p.max(-1)) - np.log(p.min(-1))))


@metric("layers_token_head7_acc", "test accuracy when the encoded tokens after the first 7 of 28 are zeroed "
        "before the pooling (information concentrated in the head tokens)", pct=True)
def _head7(r):
    h = layer_outputs(r.net, "encoded", r.ctx.data.x_test)
    h[:, 7:] = 0.0
    logits = np.asarray(r.net.get_layer("logits")(h.mean(axis=1)))
    return float(np.mean(logits.argmax(-1) == r.ctx.data.y_test))


group(
    "sweep_token_layers",
    "An attention or token layer keeps the accuracy of a small transformer over image rows and does what its "
    "paper says to the attention or the tokens.",
    entries=(
        entry("Attention entropy regularization", "entropy reg 1e-5, tolerance 0.2",
              attention=lambda: _L("EntropyRegularizedMultiHeadAttention")(
                  HEADS, WIDTH // HEADS, factor=1e-5, tolerance=0.2, name="attention"),
              claims=(better("layers_token_entropy_out_band", "fewer attention entropies leave the band"),)),
        entry("QK-LayerNorm", "QK-LayerNorm",
              attention=lambda: _L("QKNormMultiHeadAttention")(HEADS, WIDTH // HEADS, name="attention"),
              claims=(better("layers_token_logit_range", "the attention logits spread less"),)),
        entry("Tail Token Drop", "tail token drop (encoded tokens, one L per batch)",
              after_encoder=lambda: _L("TailTokenDrop")(),
              claims=(better("layers_token_head7_acc", "the first 7 tokens alone classify better"),)),
    ),
    metrics=("test_acc", "layers_token_entropy_out_band", "layers_token_logit_range", "layers_token_head7_acc"),
    net=token_net, net_desc=TOKEN_DESC,
    note="A 1-block transformer over image rows stands in for the papers' language models and 1-D image tokenizer. "
         "Entropy regularization with the code's coefficient 1e-5 (L = 1) and tolerance 0.2, threshold initialised "
         "at 0.5: the band metric uses that initial band for every arm. QK-LayerNorm's claim (no divergence at "
         "large learning rates) is not tested at Adam 2e-3; its mechanism, bounded attention logits, is. Tail "
         "Token Drop zeroes the tail of the encoder's output tokens (the tokenizer's latent tokens in One-D-Piece), "
         "uniform length per batch as in the code; its target is the accuracy from the first 7 tokens.",
)


def _additive_pooling(h):
    """Additive attention pooling (Kitada & Iyatomi's BiRNN attention) with its scores exposed to AT / iAT."""
    import keras

    scores = keras.layers.Dense(1, name="score")(keras.layers.Dense(WIDTH, activation="tanh", name="score_h")(h))
    scores = keras.layers.Reshape((TOKENS,))(scores)
    scores = _L("AttentionScorePerturbation")(name="attention_scores")(scores)
    weights = keras.layers.Softmax(name="pool_weights")(scores)
    return keras.layers.Dot(axes=(1, 1), name="pool")([weights, h])


def _perturbable_net(ctx, **kwargs):
    return token_net(ctx, attention=lambda: _L("PerturbableMultiHeadAttention")(HEADS, WIDTH // HEADS,
                                                                                name="attention"),
                     pooling=_additive_pooling, softmax=True, **kwargs)


def _at(variant, layers):
    # the technique takes the name of a Keras loss (no from_logits): the network of this group ends in a softmax
    return lambda ctx: _obj("keras_reg.training.AttentionAdversarialTraining")(
        epsilon=1.0, lam=1.0, variant=variant, layers=layers, loss="sparse_categorical_crossentropy")


def _ce_probs():
    from benchmarks import registry

    return registry.ce(from_logits=False)


group(
    "sweep_token_steps",
    "Adversarial training on attention scores keeps the accuracy of a small transformer over image rows.",
    entries=(
        entry("AT / iAT (attention)", "AT eps 1 (self-attention scores)", techniques=(_at("at", "attention"),),
              claims=(better("test_acc", "AT on the attention scores raises the test accuracy"),)),
        entry("AT / iAT (attention)", "iAT eps 1 (pooling attention scores)",
              techniques=(_at("iat", "attention_scores"),),
              claims=(better("test_acc", "iAT on the attention scores raises the test accuracy"),)),
    ),
    metrics=("test_acc",), net=_perturbable_net, time=False, loss=_ce_probs(),
    net_desc=TOKEN_DESC.replace("mean pooling over the tokens", "additive attention pooling") +
    "; a softmax output (AT takes a loss by name, without from_logits); both attentions perturbable (identity outside AT's extra passes, so the plain arm is the stock network)",
    note="Kitada & Iyatomi perturb the additive attention of BiRNN text classifiers (epsilon 1, lambda 1 here); "
         "one arm perturbs the self-attention scores (PerturbableMultiHeadAttention, the paper's suggested "
         "extension), the other the additive pooling attention (AttentionScorePerturbation) with iAT. The "
         "interpretability claim (agreement with gradient importance) is not measured.",
)


# -- embedding group: a bag of discrete patch tokens ----------------------------------------------------------------

PATCH, LEVELS = 4, 16  # 7 x 7 patches of 4 x 4 pixels, each patch's mean intensity in 16 levels
PATCHES = (28 // PATCH) ** 2
VOCAB = PATCHES * LEVELS


def _patch_ids(x):
    """(n, 28, 28[, 1]) images -> (n, 49) integer ids: patch position * LEVELS + the patch's quantized mean."""
    from keras import ops

    x = ops.reshape(ops.cast(x, "float32"), (-1, 28 // PATCH, PATCH, 28 // PATCH, PATCH))
    level = ops.clip(ops.floor(ops.mean(x, axis=(2, 4)) * LEVELS), 0, LEVELS - 1)
    ids = ops.reshape(level, (-1, PATCHES)) + ops.arange(PATCHES, dtype="float32")[None] * LEVELS
    return ops.cast(ids, "int32")


def embedding_net(ctx, l2=None):
    """Patch-token ids -> Embedding(VOCAB, 16) -> Flatten -> Dense(64) 'hidden' ReLU -> Dense(10) 'logits'; with `l2`
    the embedding is the mini-batch aware one, its frequencies counted on the training images."""
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    ids = keras.layers.Lambda(_patch_ids, name="patch_ids")(inputs)
    if l2 is None:
        emb = keras.layers.Embedding(VOCAB, 16, name="embedding")
    else:
        counts = np.bincount(np.asarray(_patch_ids(ctx.data.x_train)).ravel(), minlength=VOCAB) + 1
        emb = _L("MiniBatchAwareEmbedding")(VOCAB, 16, frequencies=counts.astype("float32"), l2=l2, name="embedding")
    h = keras.layers.Flatten(name="flatten")(emb(ids))
    h = keras.layers.Dense(HIDDEN, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(ctx.data.num_classes, name="logits")(h), name="embedding_net")


@metric("layers_emb_overfit_gap", "training accuracy - test accuracy (the over-fitting the embedding L2 fights)",
        higher=False, pct=True)
def _overfit(r):
    return common.accuracy(r.net, r.ctx.data.x_train, r.ctx.data.y_train) - r.values["test_acc"]


group(
    "sweep_embedding_layers",
    "The mini-batch aware embedding L2 keeps the accuracy of a patch-token embedding model and reduces its "
    "over-fitting.",
    entries=(
        entry("Mini-batch-aware L2 (DIN)", "mini-batch aware L2 0.01", l2=0.01,
              claims=(better("layers_emb_overfit_gap", "the train-test accuracy gap is smaller"),
                      better("test_acc", "the test accuracy is higher"))),
    ),
    metrics=("test_acc", "layers_emb_overfit_gap"), net=embedding_net,
    net_desc=f"embedding net: {PATCHES} patch tokens (4x4 patch position x {LEVELS} mean-intensity levels, "
    f"vocabulary {VOCAB}), Embedding 16, Flatten, Dense(64) 'hidden' ReLU, Dense(10) 'logits'",
    note="DIN regularizes the huge sparse-ID embeddings of a CTR model; here a small vocabulary of discrete patch "
         "tokens (each id's training count is its frequency n_j, +1) with the docstring's lambda 0.01. DIN's "
         "claim is less over-fitting (higher test AUC), measured here as the train-test accuracy gap and the test "
         "accuracy.",
)

"""The sweep: every catalogued technique without a dedicated experiment, placed where it belongs in one standard
network on real data, against that network without it (same data, budget, optimizer and seeds).

A dedicated experiment (`registry.py`) tests a paper's headline claim in a setting built for it. The sweep answers
the first question a user has about every other technique: put in its slot of a small CNN on Fashion-MNIST, does it
train, what does it cost in accuracy and step time, and does it move the quantity it acts on (the orthogonality
error for an orthogonality regularizer, the sparsity for a sparsifier, the anchor distance for an anchor...)?

Each sweep group (`sweep_regularizers`, `sweep_layers`, ...) is an ordinary registry experiment: its first arm is
the plain network, every other arm is one technique (`entry`). Every entry gets the claim "keeps the plain
network's test accuracy" (`not_worse`, the trade-off rule) plus the claims it states about its own target metric.
The evidence and cost tables, the JSON and the coverage read them like any other experiment.

    group("sweep_constraints", "Weight constraints in their slot.", entries=(
        entry("Spectral-norm clipping (matrix)", "spectral-norm clip 1.0",
              dense=lambda name: {"kernel_constraint": _obj("keras_reg.constraints.SpectralNormClip")(1.0)},
              claims=(better("hidden_spectral_norm", "spectral norm of the hidden kernel is lower"),)),
    ), metrics=("test_acc", "hidden_spectral_norm"))

Budget: `SWEEP` (1,000 Fashion-MNIST training images, 1,000 test images), `EPOCHS` epochs of Adam(`LEARNING_RATE`), batch 128,
3 seeds. This is a check at one small scale, not the paper's experiment: the setting column says so.
"""

import dataclasses

from benchmarks.common import Setting

# `registry` is imported inside the functions: registry.py imports the sweep group modules at its end, so this module
# must import without it.

SWEEP = Setting("fashion_mnist", n_train=1000, n_test=1000)
EPOCHS = 4
LEARNING_RATE = 2e-3
FILTERS = (8, 16)
HIDDEN = 64
# Implemented catalogue rows the sweep does not place, with the reason (the smoke test keeps this list exact).
NOT_PLACED = {
    "BEER representation-rank bound": "a critic regularizer of value-based reinforcement learning: it needs rewards, "
    "consecutive state-action pairs and a Bellman target, which an image classifier has no slot for",
    "Contractive reconstruction": "a penalty on an auto-encoder's reconstruction Jacobian: the model outputs "
    "images, not class scores, so the sweep's accuracy claim and network do not apply (its cost is in the "
    "training-step table)",
    "Generalized teacher forcing": "a training scheme for recurrent models reconstructing dynamical-system "
    "trajectories; no classification slot (its cost is in the training-step table)",
    "Monge gap": "a regularizer of a learned transport map between two distributions (source cells to target cells "
    "in the paper); a classifier has neither the map nor the two measures",
}

NET_DESC = (f"sweep_cnn: Conv{FILTERS[0]}-act-pool, Conv{FILTERS[1]}-act-pool, Flatten, Dense({HIDDEN}) 'hidden'-act, "
            "Dense(10) 'logits'; the technique in its slot")


def sweep_cnn(ctx, conv=None, dense=None, activation=None, after_conv=None, after_hidden=None, conv_layer=None,
              hidden_layer=None, wrap=None, logits=None, softmax=False):
    """The sweep's network, with a hook per slot (all optional; each hook gets the layer's index or name):

    conv(i) -> dict: extra keyword arguments of conv layer i ("conv0", "conv1"), e.g. a kernel_regularizer.
    dense(name) -> dict: extra keyword arguments of the Dense layer `name` ("hidden" or "logits").
    activation(name) -> layer: the activation after "conv0", "conv1" and "hidden" (default ReLU).
    after_conv(i) -> layer or None: inserted after conv block i's activation (before its pooling).
    after_hidden() -> layer or None: inserted after the hidden activation.
    conv_layer(i, filters) -> layer: replaces conv layer i (keep the name f"conv{i}").
    hidden_layer(units) -> layer: replaces the hidden Dense (keep the name "hidden").
    wrap(layer) -> layer: applied to every Conv/Dense layer (a wrapper such as a quantizer).
    logits(units) -> layer: replaces the logits Dense.
    """
    import keras

    wrap = wrap or (lambda layer: layer)
    act = activation or (lambda name: keras.layers.ReLU(name=f"act_{name}"))
    inputs = keras.Input(ctx.data.input_shape)
    h = inputs
    for i, filters in enumerate(FILTERS):
        if conv_layer is not None:
            layer = conv_layer(i, filters)
        else:
            layer = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}", **(conv(i) if conv else {}))
        h = act(f"conv{i}")(wrap(layer)(h))
        extra = after_conv(i) if after_conv is not None else None
        if extra is not None:
            h = extra(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    layer = hidden_layer(HIDDEN) if hidden_layer is not None else keras.layers.Dense(
        HIDDEN, name="hidden", **(dense("hidden") if dense else {}))
    h = act("hidden")(wrap(layer)(h))
    extra = after_hidden() if after_hidden is not None else None
    if extra is not None:
        h = extra(h)
    num_classes = ctx.data.num_classes
    layer = logits(num_classes) if logits is not None else keras.layers.Dense(
        num_classes, name="logits", **(dense("logits") if dense else {}))
    outputs = wrap(layer)(h)
    if softmax:
        outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(outputs)
    return keras.Model(inputs, outputs, name="sweep_cnn")


@dataclasses.dataclass(frozen=True)
class Entry:
    technique: str  # the catalogue row name
    arm: object  # a registry.Arm
    claims: tuple  # extra claims about the arm (besides "keeps the accuracy")


def entry(technique, arm_name, claims=(), **arm_kwargs):
    """One technique of a sweep group: an arm named `arm_name` (say the hyper-parameters in it) built by
    `registry.arm(arm_name, **arm_kwargs)` without per-epoch validation, and its claims. A claim is made with
    `better`/`not_worse`/`within` below, which fill in the arm and the plain baseline."""
    from benchmarks import registry

    arm_kwargs.setdefault("validate", False)
    arm = dataclasses.replace(registry.arm(arm_name, **arm_kwargs), technique=technique)
    return Entry(technique, arm, tuple(c(arm_name) for c in claims))


def better(metric, text):
    """A claim: the entry beats the plain arm on `metric` beyond the std bands."""
    from benchmarks import registry

    return lambda arm_name: registry.better(metric, arm_name, "plain", text)


def not_worse(metric, text):
    """A trade-off claim: the entry is not worse than the plain arm on `metric` beyond the std bands."""
    from benchmarks import registry

    return lambda arm_name: registry.not_worse(metric, arm_name, "plain", text)


def within(metric, tolerance, text):
    """The entry's mean is at most `tolerance` worse than the plain arm's on `metric`."""
    from benchmarks import registry

    return lambda arm_name: registry.within(metric, arm_name, "plain", tolerance, text)


def group(key, claim, entries, metrics=("test_acc",), net=None, net_desc=NET_DESC, plain=None, time=True,
          setting=SWEEP, epochs=EPOCHS, note="", **spec_kwargs):
    """Registers a sweep group: the plain arm (`plain`, default `arm("plain")` without validation) and one arm per
    entry; every entry is claimed to keep the plain test accuracy; `time=False` leaves the group out of the
    interleaved cost table (step techniques, which `bench_train_steps` already times)."""
    from benchmarks import registry

    entries = tuple(entries)
    plain = plain or registry.arm("plain", validate=False)
    arms = (plain,) + tuple(e.arm for e in entries)
    claims = []
    for e in entries:
        claims.append(registry.not_worse("test_acc", e.arm.name, plain.name,
                                         f"{e.technique}: keeps the plain network's test accuracy"))
        claims.extend(e.claims)
    techniques = tuple(dict.fromkeys(e.technique for e in entries))
    return registry.spec(
        key, techniques=techniques, claim=claim, paper="each technique's own (see the catalogue); here one small "
        "common setting", settings=(setting,), arms=arms, claims=claims, metrics=tuple(metrics),
        net=net or sweep_cnn, net_desc=net_desc, epochs=epochs, quick_epochs=1,
        optimizer=spec_kwargs.pop("optimizer", None) or registry.adam(LEARNING_RATE),
        opt_desc=spec_kwargs.pop("opt_desc", f"Adam lr {LEARNING_RATE:g}"),
        cost_arms=tuple(a.name for a in arms) if time else (), note=note, sweep=True, **spec_kwargs)


def hidden_kernel(net, name="hidden"):
    """The (inputs, units) kernel of the named Dense layer, as numpy (for a wrapper, the wrapped layer's own kernel:
    the trained float weights, not a folded or quantized deployment)."""
    import numpy as np

    layer = net.get_layer(name)
    for candidate in (layer, getattr(layer, "layer", None)):
        kernel = getattr(candidate, "kernel", None)
        if kernel is not None:
            return np.asarray(kernel)
    raise ValueError(f"layer {name!r} has no kernel")

"""Sweep group: initializers (`keras_reg.initializers`) in the sweep network, with the activation or architecture
each is derived for.

An initializer acts before the first step, so what it changes is trainability: the claims are the automatic "keeps
the plain accuracy" and `better("test_acc")` (faster progress within the 4 epochs), plus the training loss for SIREN
(fitting). Where the initializer is derived for another activation or architecture (tanh on the edge of chaos, sine,
maxout, BN + tanh, a residual network) the arm uses it: the comparison with the plain ReLU network is then of the
whole recipe, as the papers present it.
"""

from benchmarks.registry import _obj
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep import sweep_cnn

LAYERS = ("conv0", "conv1", "hidden")


def _init(path, **kwargs):
    return _obj(f"keras_reg.initializers.{path}")(**kwargs)


def _conv_aware(ctx):
    return sweep_cnn(ctx, conv=lambda i: {"kernel_initializer": _init("ConvolutionAware", seed=ctx.seed + i)})


def _block_orthogonal(ctx):
    return sweep_cnn(ctx, conv=lambda i: {"kernel_initializer": _init("BlockOrthogonalConv", seed=ctx.seed + i)})


def _edge_of_chaos(ctx):
    # tanh at its EOC point with sigma_b = 0.2 (kernel sigma_w solved by the initializer) on the three feature layers
    def kwargs(seed):
        return {"kernel_initializer": _init("EdgeOfChaosNormal", activation="tanh", sigma_b=0.2, seed=seed),
                "bias_initializer": _init("EdgeOfChaosNormal", activation="tanh", sigma_b=0.2, part="bias",
                                          seed=seed + 100)}

    import keras

    return sweep_cnn(ctx, conv=lambda i: kwargs(ctx.seed + i),
                     dense=lambda name: kwargs(ctx.seed + 2) if name == "hidden" else {},
                     activation=lambda name: keras.layers.Activation("tanh", name=f"act_{name}"))


def _siren(ctx):
    # sin(30 x) after every feature layer; conv0 gets the first-layer scheme U(-1/n, 1/n), the others sqrt(6/n)/30

    layers = _obj("keras_reg.layers")
    return sweep_cnn(
        ctx, conv=lambda i: {"kernel_initializer": _init("SirenUniform", w0=30.0, is_first=i == 0, seed=ctx.seed + i)},
        dense=lambda name: {"kernel_initializer": _init("SirenUniform", w0=30.0, seed=ctx.seed + 2)}
        if name == "hidden" else {},
        activation=lambda name: layers.Sine(30.0, name=f"act_{name}"))


def _maxout_layer(name):
    import keras

    class Maxout(keras.layers.Layer):
        """max over consecutive pairs of channels: the rank-2 maxout unit."""

        def call(self, x):
            shape = tuple(x.shape[1:-1]) + (x.shape[-1] // 2, 2)
            return keras.ops.max(keras.ops.reshape(x, (-1,) + shape), axis=-1)

    return Maxout(name=name)


def _maxout(ctx):
    # every feature layer produces 2 pieces per unit (twice the filters), max over the pair: the unit count stays
    import keras

    return sweep_cnn(
        ctx, conv_layer=lambda i, filters: keras.layers.Conv2D(
            2 * filters, 3, padding="same", name=f"conv{i}", kernel_initializer=_init("MaxoutHeNormal", rank=2,
                                                                                       seed=ctx.seed + i)),
        hidden_layer=lambda units: keras.layers.Dense(
            2 * units, name="hidden", kernel_initializer=_init("MaxoutHeNormal", rank=2, seed=ctx.seed + 2)),
        activation=lambda name: _maxout_layer(f"act_{name}"))


def _shaped_orthogonal(ctx):
    # "norm, act" order: orthogonal kernel, BN whose gamma is the shaping gain l^-0.4 of layer l = 1, 2, 3, then tanh
    import keras

    depth = {"conv0": 1, "conv1": 2, "hidden": 3}

    def norm_act(name):
        return keras.Sequential([
            keras.layers.BatchNormalization(gamma_initializer=_init("ShapedOrthogonal", layer_index=depth[name],
                                                                    exponent=0.4, part="gamma")),
            keras.layers.Activation("tanh")], name=f"act_{name}")

    return sweep_cnn(ctx, conv=lambda i: {"kernel_initializer": keras.initializers.Orthogonal(seed=ctx.seed + i)},
                     dense=lambda name: {"kernel_initializer": keras.initializers.Orthogonal(seed=ctx.seed + 2)}
                     if name == "hidden" else {}, activation=norm_act)


def _fixup(ctx):
    # the residual CNN without normalisation (stem, 2 blocks Conv-ReLU-Conv, 16 channels), re-initialised by Fixup:
    # L = 2 branches of m = 2 layers, the last layer of each branch and the classifier zeroed
    from benchmarks import common

    net = common.residual_cnn(ctx.data.input_shape, ctx.data.num_classes, width=16, blocks=2)
    _obj("keras_reg.initializers.apply_fixup")(
        net, [[f"block{i}_conv0", f"block{i}_conv1"] for i in range(2)], classifier="logits", seed=ctx.seed)
    return net


ACC = better("test_acc", "trains to a higher test accuracy within the budget")

group("sweep_initializers", "An initializer (with the activation or architecture it is derived for) keeps the plain "
      "network's accuracy and trains at least as fast.",
      entries=(
          entry("ConvAwareInit", "ConvAware eps 0.05 (conv)", net=_conv_aware, claims=(ACC,)),
          entry("Orthogonal convolution initializer", "block-orthogonal conv (conv)", net=_block_orthogonal,
                claims=(ACC,)),
          entry("Edge-of-chaos initialization", "EOC tanh sigma_b 0.2 (tanh net)", net=_edge_of_chaos, claims=(ACC,)),
          entry("SIREN initialization", "SIREN w0 30 (sine net)", net=_siren,
                claims=(ACC, better("train_loss", "fits the training set to a lower loss"))),
          entry("Maxout He initialization", "maxout He rank 2 (maxout net)", net=_maxout, claims=(ACC,)),
          entry("Orthogonal-init BN shaping", "orthogonal + BN gain l^-0.4 (BN-tanh net)", net=_shaped_orthogonal,
                claims=(ACC,)),
          entry("Fixup", "Fixup L=2 m=2 (residual CNN, no norm)", net=_fixup, claims=(ACC,)),
      ), metrics=("test_acc", "train_loss"),
      note="Default arguments of the initializers (the papers' values): ConvAware eps_std 0.05; block-orthogonal "
           "conv gain 1 (conv0 has 1 input channel, conv1 8 -> 16: an isometry); EOC for tanh with sigma_b 0.2 "
           "(tanh network, kernels and biases of conv0, conv1, hidden); SIREN w0 30 with sine activations (a "
           "classifier, not the paper's implicit representations); maxout rank 2 with twice the pieces (2x the "
           "feature-layer parameters); Meterez et al.'s shaping exponent 0.4 with BN-tanh after each feature layer "
           "(the paper's deep MLP is 3 layers deep here); Fixup on a 2-block residual CNN without normalisation and "
           "without the paper's scalar biases/multipliers. The plain arm is the ReLU sweep_cnn with Keras' default "
           "Glorot init, so a difference is of the whole recipe.")

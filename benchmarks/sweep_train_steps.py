"""Sweep groups: step techniques (`keras_reg.training`, wrapped in a `RegularizedModel`) in the sweep network, or in
the smallest network that gives them the setting they need (a noisy-label set, a row-sequence RNN, a token model,
a pre-trained network to fine-tune).

Techniques whose per-sample loss is given by name (AdaMixUp, ELLE-A, Hessian alignment, ...) see probabilities:
those arms use `sweep_cnn(softmax=True)` with the matching cross-entropy, which is the same network and the same
loss as the plain arm's logits + cross-entropy from logits.
"""

import math

import numpy as np

from benchmarks import sweep
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.registry import ce
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group


def _steps_per_epoch(ctx):
    return math.ceil(len(ctx.data.y_train) / ctx.batch_size)


def _probs_net(ctx, **kwargs):
    """The sweep network ending in a softmax (for techniques whose per-sample loss is a Keras loss name)."""
    return sweep.sweep_cnn(ctx, softmax=True, **kwargs)


def _make(path, **kwargs):
    """(ctx) -> the step technique at `path`; a kwarg given as a callable is called with ctx (like registry.component)."""
    return lambda ctx: _obj(path)(**{k: v(ctx) if callable(v) else v for k, v in kwargs.items()})


def _seed(ctx):
    return ctx.seed


# -- target metrics of this file (prefix steps_) ------------------------------------------------------------------

def _bright(x, threshold):
    return x.reshape(len(x), -1).mean(axis=1) > threshold


def _domains(ctx):
    """Two natural domains of the training images: mean intensity above / below the training median (bright and
    dark garments), the split the Hessian-alignment arm aligns across and its metric measures."""
    means = ctx.data.x_train.reshape(len(ctx.data.x_train), -1).mean(axis=1)
    ctx.extra["domain_threshold"] = float(np.median(means))
    return (means > ctx.extra["domain_threshold"]).astype("int32")


@metric("steps_domain_gap", "|accuracy on bright test images - accuracy on dark ones| (split at the training "
        "images' median mean intensity): the gap between the two domains", higher=False, pct=True)
def _domain_gap(r):
    from benchmarks import common

    x, y = r.ctx.data.x_test, r.ctx.data.y_test
    means = r.ctx.data.x_train.reshape(len(r.ctx.data.x_train), -1).mean(axis=1)
    bright = _bright(x, float(np.median(means)))
    return abs(common.accuracy(r.net, x[bright], y[bright]) - common.accuracy(r.net, x[~bright], y[~bright]))


@metric("steps_w3_acc", "test accuracy with every kernel at 3 bits: elastic-quantization wrappers switched to their "
        "3-bit sub-net, other kernels fake-quantized to 3 bits per output channel (post-training)", pct=True)
def _w3_acc(r):
    from benchmarks import common
    from keras_reg.functional import fake_quantize

    wrappers = [layer for layer in r.net._flatten_layers() if type(layer).__name__ == "ElasticQuantWrapper"]
    wrapped = {id(v) for w in wrappers for v in w.weights}
    saved = [(w.bits, w.bits.numpy()) for w in wrappers]
    for w in wrappers:
        w.bits.assign(3)
    for v in r.net.weights:
        if id(v) not in wrapped and v.path.endswith("kernel") and len(v.shape) >= 2:
            saved.append((v, v.numpy()))
            v.assign(fake_quantize(v.value, 3, axis=-1))
    try:
        return common.accuracy(r.net, r.ctx.data.x_test, r.ctx.data.y_test)
    finally:
        for v, value in saved:
            v.assign(value)


# -- the sweep network, clean labels --------------------------------------------------------------------------------

def _gt_self_distillation(alpha):
    """The student trains on alpha * y + (1 - alpha) * teacher(x), the teacher being the previous model: the sweep
    network trained first for the same budget on the same loss (MSE on softmax outputs, as the authors)."""
    def make(ctx):
        import keras

        teacher = _probs_net(ctx)
        teacher.compile(keras.optimizers.Adam(sweep.LEARNING_RATE), "mean_squared_error")
        teacher.fit(ctx.data.x_train, _one_hot(ctx, ctx.data.y_train), batch_size=ctx.batch_size, epochs=ctx.epochs,
                    verbose=0)
        return _obj("keras_reg.training.GroundTruthGuidedSelfDistillation")(alpha=alpha, teacher=teacher)

    return make


def _one_hot(ctx, y):
    return np.eye(ctx.data.num_classes, dtype="float32")[y]


def _mse(ctx):
    import keras

    return keras.losses.MeanSquaredError()


_IFT_VALIDATION = 200  # the implicit-gradient arm's validation split (of the 1,000 training images)


def _ift_inputs(ctx, x):
    n = len(x) - _IFT_VALIDATION
    index = np.arange(n) % _IFT_VALIDATION  # streams need the training set's length: the split is cycled
    return _obj("keras_reg.data.with_streams")(x[:n], validation=(x[n:][index], ctx.data.y_train[n:][index]))


def _ift_labels(ctx, y):
    return y[:-_IFT_VALIDATION]


def _semixup_inputs(ctx, x):
    # The authors' unlabelled pool holds the labelled images too; here it is the training images themselves (the
    # 1,000-image budget has no other images), each batch paired with another shuffled batch of them.
    rng = np.random.default_rng(ctx.seed)
    return _obj("keras_reg.data.with_streams")(x, unlabelled=x[rng.permutation(len(x))])


def _semixup(ctx):
    import keras

    shift = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=ctx.seed)
    return _obj("keras_reg.training.Semixup")(augmentation=shift, from_logits=True, seed=ctx.seed)


def _encoder_net(ctx):
    """The sweep network with its conv trunk as a nested model named "encoder" (what the pretext head reads)."""
    import keras

    plain = sweep.sweep_cnn(ctx)
    encoder = keras.Model(plain.input, plain.get_layer("flatten").output, name="encoder")
    inputs = keras.Input(ctx.data.input_shape)
    h = encoder(inputs)
    h = plain.get_layer("act_hidden")(plain.get_layer("hidden")(h))
    return keras.Model(inputs, plain.get_layer("logits")(h), name="sweep_cnn_encoder")


def _eq_wrap(layer):
    # Deployed at 8 bits (the largest sub-net); the 3-bit metric switches every wrapper to its 3-bit sub-net.
    return _obj("keras_reg.layers.ElasticQuantWrapper")(layer, bits=8)


group(
    "sweep_train_steps",
    "A step technique keeps the plain network's accuracy and moves the quantity it acts on.",
    entries=(
        entry("AdaMixUp", "AdaMixUp (features act_hidden, weights 1/1)", net=_probs_net, loss=ce(False),
              techniques=(_make("keras_reg.training.AdaMixUp", feature_layer="act_hidden", seed=_seed),),
              claims=(better("test_acc", "AdaMixUp raises the test accuracy"),)),
        entry("ConvergeSmooth", "ConvergeSmooth FGSM-RS eps=0.1 lam=7 (single)",
              techniques=(_make("keras_reg.training.ConvergeSmooth", steps_per_epoch=_steps_per_epoch, epsilon=0.1,
                                single_step=True, lam=7.0, from_logits=True, seed=_seed),),
              claims=(better("pgd_acc", "ConvergeSmooth's fast adversarial training raises the PGD accuracy"),)),
        entry("ELLE-A", "ELLE-A eps=8/255 lam_max=4000", net=_probs_net, loss=ce(False),
              techniques=(_make("keras_reg.training.AdaptiveLocalLinearityRegularization", epsilon=8 / 255,
                                lam_max=4000.0, seed=_seed),),
              claims=(better("lin_err", "ELLE-A lowers the local-linearity error"),)),
        entry("EQ-Net sandwich training (GPG distillation chain)", "EQ-Net sandwich (2-8 bits, 3 sub-nets, 8-bit deployed)",
              wrap=_eq_wrap, techniques=(_make("keras_reg.training.ElasticQuantSandwich", from_logits=True,
                                               keep_first_last=False, seed=_seed),),
              claims=(better("steps_w3_acc", "the sandwich-trained network keeps more accuracy at 3-bit weights"),)),
        entry("GT-guided self-distillation", "GT-guided self-distillation alpha=0.5 (MSE, one generation)",
              net=_probs_net, loss=_mse, labels=_one_hot, techniques=(_gt_self_distillation(0.5),),
              claims=(better("test_acc", "one ground-truth-guided self-distillation step raises the test "
                                         "accuracy"),)),
        entry("Hessian alignment (HGP / Hutchinson)", "HGP alignment 1e-3/1e-3 (bright/dark domains)",
              net=_probs_net, loss=ce(False), per_sample=True,
              techniques=(_make("keras_reg.training.HessianAlignment", domains=_domains, head="logits"),),
              claims=(better("steps_domain_gap", "aligning the head's gradients and Hessians across the two "
                                                 "domains narrows their accuracy gap"),)),
        entry("Implicit-function hyper-parameter gradients", "IFT weight decay (tensor, 5 Neumann terms)",
              net=_probs_net, loss=ce(False), inputs=_ift_inputs, labels=_ift_labels,
              techniques=(_make("keras_reg.training.ImplicitHyperparameterGradients", granularity="tensor"),),
              claims=(better("test_acc", "weight decay tuned on the validation split raises the test accuracy"),)),
        entry("Policy-gradient noise mask", "policy noise mask grid 4, blur 5/1.0",
              techniques=(_make("keras_reg.training.PolicyGradientNoiseMask", grid=4, kernel_size=5, sigma=1.0,
                                seed=_seed),),
              claims=(better("test_acc", "training on learned noise masks raises the test accuracy"),)),
        entry("ScatSimCLR pretext-task auxiliary loss", "rotation pretext weight 1 (head 64-32)", net=_encoder_net,
              techniques=(_make("keras_reg.training.RotationPretextRegularization", encoder="encoder", weight=1.0,
                                hidden_units=(64, 32), seed=_seed),),
              claims=(better("test_acc", "the rotation pretext task raises the test accuracy"),)),
        entry("Semixup", "Semixup 2/4/2 (shifts; unlabelled = the training images)", inputs=_semixup_inputs,
              techniques=(_semixup,),
              claims=(better("test_acc", "Semixup's consistency terms raise the test accuracy"),)),
    ),
    metrics=("test_acc", "pgd_acc", "lin_err", "steps_w3_acc", "steps_domain_gap"),
    time=False,
    note="Strengths from the papers' code defaults, scaled to 28x28 images and 4 epochs: ConvergeSmooth eps=0.1 "
         "(the pgd_acc radius; authors 16/255 on CIFAR), lam=7, the clean loss' label smoothing not used in the "
         "compiled loss; ELLE-A eps=8/255 lam_max=4000 (authors); EQ-Net: every Conv/Dense wrapped (deployed at 8 bits), "
         "sub-nets drawn from 2..8 bits for every layer (keep_first_last off, so the 3-bit metric's sub-net was "
         "trained), alpha 0.5, T 1; GT self-distillation: the teacher is the sweep network "
         "trained first on the same MSE loss for the same 4 epochs (one generation, alpha 0.5, one-hot MSE: the "
         "plain arm uses cross-entropy); Hessian alignment: no domain labels exist, so the two domains are bright "
         "and dark training images (median mean intensity), HGP with the authors' weights 1e-3; IFT: 800 training "
         "images, the other 200 only through the hyper steps (cycled validation stream), decay per tensor from "
         "1e-4, RMSprop 0.01; noise mask: 4x4 cells and a 5-pixel blur (paper: 8x8 on 224 px, kernel 13), the "
         "default small conv policy; rotation pretext on supervised training (the paper's is SimCLR), head "
         "64-32 (authors 512-128); Semixup's weights 2/4/2, Beta(0.75), shifts as T(u).",
)

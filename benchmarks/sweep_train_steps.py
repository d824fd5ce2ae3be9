"""Sweep groups: step techniques (`keras_reg.training`, wrapped in a `RegularizedModel`) in the sweep network, or in
the smallest network that gives them the setting they need (a noisy-label set, a row-sequence RNN, a token model,
a pre-trained network to fine-tune, an item tower over feature columns, a linear head on frozen features, a
real-vs-generated discriminator).

Not placed: Contractive reconstruction (an auto-encoder's reconstruction Jacobian), Mixed Barlow Twins (a label-free
two-view siamese embedding) and Generalized teacher forcing (a latent recurrence reconstructing trajectories): their
models do not output class scores, so the sweep's accuracy claim cannot be measured on them.

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
    """(ctx) -> the step technique at `path`; a callable kwarg is called with ctx (as in registry.component)."""
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


def _categorical(ctx):
    import keras

    return keras.losses.CategoricalCrossentropy()


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
        entry("CS-IB", "CS-IB beta=1e-2 sigma=1 (t = hidden; + CE)", net=_probs_net, loss=_categorical,
              labels=_one_hot, techniques=(_make("keras_reg.training.CauchySchwarzInformationBottleneck", beta=0.01,
                                                 sigma=1.0, representation="hidden"),),
              claims=(better("test_acc", "the CS-IB terms raise the test accuracy"),)),
        entry("EQ-Net sandwich training (GPG distillation chain)",
              "EQ-Net sandwich (2-8 bits, 3 sub-nets, 8-bit deployed)",
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
         "compiled loss; ELLE-A eps=8/255 lam_max=4000 (authors); EQ-Net: every Conv/Dense wrapped (deployed at "
         "8 bits), sub-nets drawn from 2..8 bits for every layer (keep_first_last off, so the 3-bit metric's "
         "sub-net was trained), alpha 0.5, T 1; GT self-distillation: the teacher is the sweep network trained "
         "first on the same MSE loss for the same 4 epochs (one generation, alpha 0.5, one-hot MSE: the "
         "plain arm uses cross-entropy); Hessian alignment: no domain labels exist, so the two domains are bright "
         "and dark training images (median mean intensity), HGP with the authors' weights 1e-3; IFT: 800 training "
         "images, the other 200 only through the hyper steps (cycled validation stream), decay per tensor from "
         "1e-4, RMSprop 0.01; noise mask: 4x4 cells and a 5-pixel blur (paper: 8x8 on 224 px, kernel 13), the "
         "default small conv policy; rotation pretext on supervised training (the paper's is SimCLR), head "
         "64-32 (authors 512-128); Semixup's weights 2/4/2, Beta(0.75), shifts as T(u). CS-IB (a regression "
         "method) on one-hot labels and softmax outputs, added to the cross-entropy (the paper trains on the CS-IB "
         "objective alone), beta 1e-2 and sigma 1 as the authors' code, t = the hidden layer's pre-activation.",
)


# -- 40% symmetric label noise: ELR+, ADELE ---------------------------------------------------------------------------

def _scaled_input_net(ctx):
    """The sweep network behind a resizing to 28x28, so that it takes the rescaled copies of multi-scale
    consistency (the network itself needs its 28x28 input: the rescaling acts as a blur / an aliasing)."""
    import keras

    inputs = keras.Input((None, None, ctx.data.input_shape[-1]))
    h = keras.layers.Resizing(*ctx.data.input_shape[:2], name="resize")(inputs)
    return keras.Model(inputs, sweep.sweep_cnn(ctx)(h), name="sweep_cnn_any_size")


def _adele(ctx):
    return _obj("keras_reg.training.ADELELabelCorrection")(len(ctx.data.y_train), ctx.data.num_classes,
                                                           threshold=0.8, from_logits=True)


def _adele_callbacks(ctx, model):
    # The class-wise early-learning onset (the authors' detector) on the noisy training labels switches classes on.
    onset = _obj("keras_reg.callbacks.EarlyLearningOnset")(ctx.data.num_classes,
                                                           data=(ctx.data.x_train, ctx.data.y_train), min_epochs=3)
    return [ctx.techniques[0].follow(onset)]


@metric("steps_label_accuracy", "fraction of the training labels the arm trains on at the end that are the clean "
        "labels (ADELE: its corrected labels; other arms: the noisy labels as given)", pct=True)
def _label_accuracy(r):
    y = r.ctx.data.y_train
    for technique in r.ctx.techniques:
        if hasattr(technique, "corrected_labels"):
            y = technique.corrected_labels(y)
    return float(np.mean(y == r.ctx.data.y_train_clean))


def _noisy_group():
    from benchmarks import registry

    noisy = registry.noisy(sweep.SWEEP, 0.4)
    group(
        "sweep_train_steps_noisy",
        "A noisy-label step technique keeps (or raises) the plain network's accuracy under 40% symmetric noise.",
        entries=(
            entry("ELR+", "ELR+ lam=3 beta=0.7 (mixup 1, EMA 0.997)", per_sample=True,
                  techniques=(_make("keras_reg.training.ELRPlus", num_samples=lambda c: len(c.data.y_train),
                                    num_classes=lambda c: c.data.num_classes, lam=3.0, beta=0.7, from_logits=True,
                                    seed=_seed),),
                  claims=(better("test_acc", "ELR+ raises the test accuracy under label noise"),)),
            entry("ADELE label correction", "ADELE correction tau=0.8 (class-wise onset)", per_sample=True,
                  techniques=(_adele,), callbacks=_adele_callbacks,
                  claims=(better("steps_label_accuracy", "ADELE's corrected training labels are more often the "
                                                         "clean ones"),
                          better("test_acc", "ADELE raises the test accuracy under label noise"))),
            entry("ADELE multi-scale consistency", "multi-scale consistency 0.7/1.5 lam=1 tau=0.8",
                  net=_scaled_input_net,
                  techniques=(_make("keras_reg.training.MultiScaleConsistency", scales=(0.7, 1.5), lam=1.0,
                                    threshold=0.8, from_logits=True),),
                  claims=(better("test_acc", "multi-scale consistency raises the test accuracy under label "
                                             "noise"),)),
        ),
        metrics=("test_acc", "steps_label_accuracy"), setting=noisy, epochs=6, time=False,
        note="40% symmetric noise on 2,000 training images (registry.noisy), 6 epochs so that memorisation can "
             "start. ELR+: the authors' CIFAR-10 lam 3, beta 0.7, mixup alpha 1, EMA 0.997 without their warm-up "
             "epochs; the peer is a clone trained in the same step. ADELE (a segmentation method) on image "
             "classification: tau 0.8, a class's correction starts when EarlyLearningOnset (min_epochs 3, its "
             "least) flags it, from the step's own prediction. Multi-scale consistency: scales 0.7/1.5, lam 1, "
             "tau 0.8 (the "
             "authors'), the rescaled copies resized back to 28x28 at the network's input (the sweep network is "
             "not size-agnostic).",
    )


_noisy_group()


# -- a row-sequence RNN: gradient clipping and Pascanu's Omega --------------------------------------------------------

RNN_UNITS = 64


def _rnn(ctx):
    """SimpleRNN(64) over the 28 image rows (each a 28-pixel input), read out at the last step; softmax output."""
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    h = keras.layers.Reshape(ctx.data.input_shape[:2], name="rows")(inputs)
    h = keras.layers.SimpleRNN(RNN_UNITS, name="rnn")(h)
    outputs = keras.layers.Dense(ctx.data.num_classes, activation="softmax", name="logits")(h)
    return keras.Model(inputs, outputs, name="row_rnn")


@metric("steps_early_grad_ratio", "log10 of the mean over test images of ||dL/dx_rows 1-4|| / ||dL/dx_rows 25-28||: "
        "how much of the loss gradient reaches the first rows of the sequence (vanishing gradients: very negative)")
def _early_grad_ratio(r):
    import tensorflow as tf

    x = tf.convert_to_tensor(r.ctx.data.x_test[:500])
    y = r.ctx.data.y_test[:500]
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, r.net(x, training=False))
    g = tape.gradient(loss, x).numpy()
    rows = np.sqrt((g.reshape(len(g), g.shape[1], -1) ** 2).sum(-1))  # (samples, rows)
    early, late = rows[:, :4].sum(1), rows[:, -4:].sum(1)
    return float(np.mean(np.log10(early + 1e-30) - np.log10(late + 1e-30)))


group(
    "sweep_train_steps_rnn",
    "On a row-by-row RNN, gradient clipping and the Omega regularizer keep the accuracy; Omega carries more of the "
    "gradient back to the early steps.",
    entries=(
        entry("Gradient norm clipping", "gradient-norm clipping 1.0",
              techniques=(_make("keras_reg.training.GradientNormClipping", threshold=1.0),),
              claims=(better("train_loss", "clipping the exploding gradients lets the RNN reach a lower training "
                                           "loss"),)),
        entry("Vanishing-gradient regularizer (Omega)", "Omega weight 2 + clipping 1.0",
              techniques=(_make("keras_reg.training.VanishingGradientRegularization", layer="rnn", weight=2.0),
                          _make("keras_reg.training.GradientNormClipping", threshold=1.0)),
              claims=(better("steps_early_grad_ratio", "Omega keeps more of the error's norm through time back to "
                                                       "the first rows"),
                      better("test_acc", "Omega raises the test accuracy of the RNN"))),
    ),
    metrics=("test_acc", "train_loss", "steps_early_grad_ratio"), net=_rnn, loss=ce(False), time=False,
    net_desc="row_rnn: the 28 image rows as a 28-step sequence, SimpleRNN(64) 'rnn' (tanh), Dense(10) softmax",
    note="Pascanu et al.'s setting is a plain tanh RNN on long-range tasks; here a 28-step pixel-row sequence. "
         "Threshold 1.0 and Omega weight 2 (the docstring's example; the paper uses a weight chosen per task "
         "and pairs Omega with clipping, as this arm does).",
)


# -- a token model over the image rows: attention adversarial training ----------------------------------------------

def _tokens(ctx):
    """The 28 image rows as tokens: Dense(32) embedding + learned positions, one 2-head attention layer with
    perturbable scores, mean pooling, Dense(64)-ReLU, Dense(10) softmax."""
    import keras

    rows, width = ctx.data.input_shape[:2]
    inputs = keras.Input(ctx.data.input_shape)
    h = keras.layers.Reshape((rows, width), name="rows")(inputs)
    h = keras.layers.Dense(32, name="embed")(h)
    h = h + keras.layers.Embedding(rows, 32, name="positions")(keras.ops.arange(rows))[None]
    h = h + _obj("keras_reg.layers.PerturbableMultiHeadAttention")(2, 16, name="attention")(h, h)
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    h = keras.layers.Dense(64, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(ctx.data.num_classes, activation="softmax", name="logits")(h)
    return keras.Model(inputs, outputs, name="row_tokens")


group(
    "sweep_train_steps_tokens",
    "Adversarial training on the attention scores (AT, iAT) keeps or raises the accuracy of a small attention "
    "model.",
    entries=(
        entry("AT / iAT (attention)", "attention AT eps=1 lam=1",
              techniques=(_make("keras_reg.training.AttentionAdversarialTraining", epsilon=1.0, variant="at"),),
              claims=(better("test_acc", "attention AT raises the test accuracy"),)),
        entry("AT / iAT (attention)", "attention iAT eps=1 lam=1",
              techniques=(_make("keras_reg.training.AttentionAdversarialTraining", epsilon=1.0, variant="iat"),),
              claims=(better("test_acc", "attention iAT raises the test accuracy"),)),
    ),
    metrics=("test_acc",), net=_tokens, loss=ce(False), time=False,
    net_desc="row_tokens: 28 row tokens, Dense(32) + positions, one residual 2-head attention (key_dim 16), mean "
             "pool, Dense(64)-ReLU, Dense(10) softmax",
    note="The paper trains BiLSTM + additive attention on text classification; here one scaled dot-product "
         "attention layer over the image rows (the paper suggests that form). epsilon 1 and lam 1 are the "
         "authors' defaults.",
)


# -- fine-tuning a pre-trained network: DR-Tune, BA-LoRA, regularized mask tuning -----------------------------------

_PRETRAINED = {}  # seed -> weights of the sweep network pre-trained on MNIST


def _pretrained_weights(ctx):
    """The sweep network trained on 2,000 MNIST digits for 2 epochs (the 'pre-trained model'; cached per seed)."""
    import keras

    from benchmarks import common

    if ctx.seed not in _PRETRAINED:
        source = common.load_setting(common.Setting("mnist", n_train=2000, n_test=100), ctx.data_dir)
        net = sweep.sweep_cnn(ctx)
        net.compile(keras.optimizers.Adam(sweep.LEARNING_RATE), ce()(ctx))
        net.fit(source.x_train, source.y_train, batch_size=128, epochs=2, verbose=0)
        _PRETRAINED[ctx.seed] = {layer.name: layer.get_weights() for layer in net.layers if layer.weights}
    return _PRETRAINED[ctx.seed]


def _load_pretrained(ctx, net):
    for name, weights in _pretrained_weights(ctx).items():
        layer = net.get_layer(name)
        getattr(layer, "layer", layer).set_weights(weights)  # a wrapper holds the pre-trained layer
    return net


def _full_batches(ctx, a):
    """`a` cycled to the next multiple of the batch size (1,000 -> 1,024: 24 images twice per epoch)."""
    n = len(a)
    return a[np.arange(math.ceil(n / ctx.batch_size) * ctx.batch_size) % n]


def _finetune_net(ctx):
    return _load_pretrained(ctx, sweep.sweep_cnn(ctx))


def _masked_net(ctx):
    """The pre-trained network with the conv and hidden kernels frozen under learned binary masks (mask tuning);
    the 10-class head is trained (the new task's classes differ from the pre-training ones)."""
    def wrap(layer):
        if layer.name == "logits":
            return layer
        return _obj("keras_reg.layers.MaskTuningWrapper")(layer, name=layer.name)

    return _load_pretrained(ctx, sweep.sweep_cnn(ctx, wrap=wrap))


@metric("steps_masked_fraction", "fraction of the masked (pruned) weights of the mask-tuning wrappers (0 without "
        "wrappers)", higher=False, pct=True)
def _masked_fraction(r):
    wrappers = [layer for layer in r.net._flatten_layers() if type(layer).__name__ == "MaskTuningWrapper"]
    return float(np.mean([w.masked_fraction() for w in wrappers])) if wrappers else 0.0


group(
    "sweep_train_steps_finetune",
    "Fine-tuning an MNIST-pre-trained sweep network on Fashion-MNIST, a fine-tuning regularizer keeps (or raises) "
    "the accuracy of plain fine-tuning.",
    entries=(
        entry("DR-Tune", "DR-Tune queue 512, weight 1 (features act_hidden)",
              techniques=(_make("keras_reg.training.DRTune", feature_layer="act_hidden", head_layer="logits",
                                queue_size=512, weight=1.0, from_logits=True),),
              claims=(better("test_acc", "DR-Tune raises the fine-tuned accuracy"),)),
        # Full batches only: BALoRARegularization fails on a smaller last batch (its retraced step loses the
        # logits' static width; reported, not fixed here), so the training set is cycled to a multiple of 128.
        entry("BA-LoRA regularizers", "BA-LoRA terms 1e-4/3e-4/1e-4, k=3 (full fine-tuning)",
              inputs=_full_batches, labels=_full_batches,
              techniques=(_make("keras_reg.training.BALoRARegularization", task="nlu"),),
              claims=(better("test_acc", "the BA-LoRA regularizers raise the fine-tuned accuracy"),)),
        entry("Regularized Mask Tuning gradient dropout", "mask tuning + gradient dropout (lambda 1, T 1)",
              net=_masked_net,
              techniques=(_make("keras_reg.training.MaskTuningGradientDropout", from_logits=True, seed=_seed),),
              claims=(better("test_acc", "regularized mask tuning raises the fine-tuned accuracy"),)),
    ),
    metrics=("test_acc", "steps_masked_fraction"), net=_finetune_net, time=False,
    net_desc=sweep.NET_DESC + "; pre-trained on 2,000 MNIST digits for 2 epochs, then fine-tuned (every arm)",
    note="The plain arm fine-tunes every weight of the pre-trained network. DR-Tune: frozen encoder = the "
         "pre-trained trunk up to act_hidden, queue 512 (authors 2048 on 224-px images; here half the training "
         "set), weight 1, rotation every step, no warm-up queue fill. BA-LoRA: the authors' lambdas (1e-4, 3e-4, "
         "1e-4) and k = 3 on full fine-tuning (no LoRA adapter: keras_reg has none), the frozen base is the "
         "pre-trained network. Mask tuning: conv0, conv1 and hidden frozen under MaskTuningWrapper (mask scale "
         "1e-2, threshold 5e-3, ||S|| weight 1e-4, the authors'), the new 10-class head trained; gradient "
         "dropout with the authors' lambda 1, T 1, alpha 1. The pre-training task (digits) differs from the "
         "paper's (ImageNet / CLIP).",
)


# -- an item tower on feature columns: SSL feature-masking contrastive regularization ---------------------------------

def _flatten_pixels(data, rng):
    data.x_train = data.x_train.reshape(len(data.x_train), -1)
    data.x_test = data.x_test.reshape(len(data.x_test), -1)


def _register_flat_transform():
    from benchmarks import common

    common.TRANSFORMS.setdefault("steps_flat_pixels", ("images given as 784 pixel features (28 row groups)",
                                                      _flatten_pixels))


_register_flat_transform()
FLAT = sweep.SWEEP.__class__(sweep.SWEEP.dataset, n_train=sweep.SWEEP.n_train, n_test=sweep.SWEEP.n_test,
                             transform="steps_flat_pixels")


def _item_net(ctx):
    """An item tower (Dense 128-ReLU, Dense 64) over the 784 pixel features, then ReLU and Dense(10) logits."""
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    tower = keras.Sequential([keras.Input(ctx.data.input_shape), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(64)], name="item_tower")
    h = keras.layers.ReLU(name="act_tower")(tower(inputs))
    return keras.Model(inputs, keras.layers.Dense(ctx.data.num_classes, name="logits")(h), name="item_classifier")


group(
    "sweep_train_steps_items",
    "The SSL feature-masking contrastive task on an item tower keeps or raises its classification accuracy.",
    entries=(
        entry("SSL auxiliary contrastive regularization for item towers", "SSL RFM weight 0.3 tau 0.1 (row groups)",
              techniques=(_make("keras_reg.training.FeatureMaskingContrastiveRegularization", tower="item_tower",
                                weight=0.3, temperature=0.1, masking="random",
                                feature_groups=[i // 28 for i in range(784)], seed=_seed),),
              claims=(better("test_acc", "the feature-masking SSL task raises the item tower's test accuracy"),)),
    ),
    metrics=("test_acc",), net=_item_net, setting=FLAT, time=False,
    net_desc="item_classifier: item tower Dense(128)-ReLU-Dense(64) over 784 pixel features, ReLU, Dense(10)",
    note="The paper's item towers read categorical feature fields for retrieval; here the 'items' are images given "
         "as 784 pixel features grouped by row (28 feature groups, a row = a field), classified by a head on "
         "the tower. Random feature masking (the paper's baseline form; correlated masking needs the fields' "
         "mutual information), weight 0.3 and tau 0.1; the SSL views come from the training batch.",
)


# -- a linear head on frozen pre-trained features: OVOR virtual outliers ---------------------------------------------

def _frozen_features(data, rng):
    """Replaces the images by the L2-normalised 64-d hidden features of a frozen backbone (the sweep network trained
    on 2,000 MNIST digits for 2 epochs, seed 0: OVOR's frozen pre-trained encoder); extra_test["steps_ood"] holds
    the features of 1,000 MNIST test digits (out-of-distribution for the Fashion-MNIST head)."""
    import keras

    from benchmarks import common

    mnist = common.load_setting(common.Setting("mnist", n_train=2000, n_test=1000), data.data_dir)
    keras.utils.set_random_seed(0)
    ctx = type("Ctx", (), {"data": mnist})()
    net = sweep.sweep_cnn(ctx)
    net.compile(keras.optimizers.Adam(sweep.LEARNING_RATE), ce()(ctx))
    net.fit(mnist.x_train, mnist.y_train, batch_size=128, epochs=2, verbose=0)
    keras.utils.set_random_seed(0)  # the caller's first arm (seed 0) starts as if nothing had drawn numbers
    backbone = keras.Model(net.input, net.get_layer("act_hidden").output)

    def features(x):
        f = backbone.predict(x, batch_size=1000, verbose=0)
        return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype("float32")

    data.x_train, data.x_test = features(data.x_train), features(data.x_test)
    data.extra_test["steps_ood"] = (features(mnist.x_test), mnist.y_test)


def _register_feature_transform():
    from benchmarks import common

    description = ("inputs = L2-normalised 64-d features of a frozen MNIST-pre-trained sweep network; OOD set: MNIST "
                   "test digits")
    common.TRANSFORMS.setdefault("steps_frozen_features", (description, _frozen_features))


_register_feature_transform()
FEATURES = sweep.SWEEP.__class__(sweep.SWEEP.dataset, n_train=sweep.SWEEP.n_train, n_test=sweep.SWEEP.n_test,
                                 transform="steps_frozen_features")


def _adam(lr):
    from benchmarks import registry

    return registry.adam(lr)


def _linear_head(ctx):
    import keras

    inputs = keras.Input(ctx.data.input_shape)
    return keras.Model(inputs, keras.layers.Dense(ctx.data.num_classes, name="logits")(inputs), name="linear_head")


def _ovor(ctx):
    ovor = _obj("keras_reg.training.VirtualOutlierRegularization")(seed=ctx.seed)
    ctx.extra["steps_ovor"] = ovor  # the outliers are generated once the head is wrapped (see _ovor_callbacks)
    return ovor


def _ovor_callbacks(ctx, model):
    ctx.extra["steps_ovor"].generate_outliers(ctx.data.x_train)  # NPOS on the task's (normalised) features
    return []


def _energy_score(net, x):
    logits = net.predict(x, batch_size=1000, verbose=0).astype("float64")
    m = logits.max(axis=1)
    return m + np.log(np.exp(logits - m[:, None]).sum(axis=1))  # -E(x) = logsumexp: high on the data


@metric("steps_ood_auroc", "AUROC of the energy score -E(x) = logsumexp(logits) separating the Fashion-MNIST test "
        "features (in) from MNIST test digits' features (out)", pct=True)
def _ood_auroc(r):
    inside = _energy_score(r.net, r.ctx.data.x_test)
    outside = _energy_score(r.net, r.ctx.data.extra_test["steps_ood"][0])
    scores = np.concatenate([inside, outside])
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[:len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside)))


group(
    "sweep_train_steps_ovor",
    "Virtual-outlier regularization of a linear head on frozen features keeps its accuracy and raises the energy "
    "gap between the data and unseen inputs.",
    entries=(
        entry("OVOR virtual outliers", "OVOR weight 0.1, 400 outliers (t_in -15, t_out -3)", techniques=(_ovor,),
              callbacks=_ovor_callbacks,
              claims=(better("steps_ood_auroc", "the head's energy separates unseen (MNIST) inputs from the task's "
                                                "better"),)),
    ),
    metrics=("test_acc", "steps_ood_auroc"), net=_linear_head, setting=FEATURES, epochs=20, time=False,
    optimizer=_adam(1e-2), opt_desc="Adam lr 0.01 (a linear head on unit-norm features)",
    net_desc="linear_head: Dense(10) on the L2-normalised 64-d features of a frozen sweep network pre-trained on "
             "MNIST",
    note="OVOR trains the classifier head on a task's frozen (prompted ViT) features with NPOS virtual outliers, "
         "against inter-task confusion in class-incremental learning; here one task: a linear head on frozen "
         "features of an MNIST-pre-trained sweep network (a frozen encoder as in the paper), 20 epochs of Adam "
         "0.01 (a linear head on 1,000 unit-norm feature vectors learns slowly at the sweep's 2e-3), and the "
         "mechanism is measured as energy-based OOD detection of MNIST digits. "
         "The authors' defaults: weight 0.1, t_in -15, t_out -3, 400 outliers, K 50, 50 boundary points, 600 "
         "candidates, sigma 1, 32 outliers per step.",
)


# -- a discriminator of real vs generated images: RpGAN's R1/R2 penalties ---------------------------------------------

def _real_vs_fake(data, rng, components=20):
    """Turns the setting into a discriminator task: label 1 = a real Fashion-MNIST image, 0 = a sample of a fixed
    generator (a 20-component PCA Gaussian fitted to the training images: blurry, plausible garments). Training: the
    first half of the real training images + as many fakes; test: half of the real test images + fresh fakes."""
    shape = data.x_train.shape[1:]
    flat = data.x_train.reshape(len(data.x_train), -1).astype("float64")
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    scale = s[:components] / np.sqrt(len(flat) - 1)

    def fakes(n):
        z = rng.standard_normal((n, components)) * scale
        return np.clip(mean + z @ vt[:components], 0.0, 1.0).reshape((n,) + shape).astype("float32")

    def mix(real):
        x = np.concatenate([real, fakes(len(real))])
        y = np.concatenate([np.ones(len(real)), np.zeros(len(real))]).astype("int32")
        order = rng.permutation(len(x))
        return x[order], y[order]

    data.x_train, data.y_train = mix(data.x_train[: len(data.x_train) // 2])
    data.y_train_clean, data.noisy_mask = data.y_train.copy(), np.zeros(len(data.y_train), bool)
    data.x_test, data.y_test = mix(data.x_test[: len(data.x_test) // 2])
    data.num_classes = 2


def _register_real_fake_transform():
    from benchmarks import common

    common.TRANSFORMS.setdefault("steps_real_vs_fake", (
        "real (label 1) vs PCA-Gaussian generated (label 0) images, half real half fake", _real_vs_fake))


_register_real_fake_transform()
REAL_FAKE = sweep.SWEEP.__class__(sweep.SWEEP.dataset, n_train=sweep.SWEEP.n_train, n_test=sweep.SWEEP.n_test,
                                  transform="steps_real_vs_fake")


def _discriminator(ctx):
    """The sweep network as a discriminator: its head is one logit d = D(x), given as the two class logits [0, d] (so
    the sparse cross-entropy is the GAN's binary loss and the penalty's gradient of the summed outputs is dD/dx)."""
    import keras

    def head(units):
        as_two = keras.layers.Lambda(lambda d: keras.ops.concatenate([keras.ops.zeros_like(d), d], -1))
        return keras.Sequential([keras.layers.Dense(1, name="d"), as_two], name="logits")

    return sweep.sweep_cnn(ctx, logits=head)


@metric("steps_d_grad_norm", "mean over 500 test images (real and fake) of ||dD/dx||^2, the discriminator logit's "
        "squared input-gradient norm", higher=False)
def _d_grad_norm(r):
    import tensorflow as tf

    x = tf.convert_to_tensor(r.ctx.data.x_test[:500])
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = tf.reduce_sum(r.net(x, training=False))
    g = tape.gradient(d, x).numpy()
    return float(np.mean((g.reshape(len(g), -1) ** 2).sum(axis=1)))


group(
    "sweep_train_steps_gan",
    "Zero-centred R1 + R2 penalties keep a real-vs-generated discriminator's accuracy and flatten it around the data.",
    entries=(
        entry("RpGAN R1/R2 gradient penalties", "R1 + R2 gamma=1",
              techniques=(_make("keras_reg.training.ZeroCenteredGradientPenalty", gamma=1.0, target="both"),),
              claims=(better("steps_d_grad_norm", "R1/R2 lower the discriminator's input-gradient norm"),)),
    ),
    metrics=("test_acc", "steps_d_grad_norm"), net=_discriminator, setting=REAL_FAKE, time=False,
    net_desc="sweep_cnn as a discriminator: Dense(1) logit d, output [0, d]",
    note="No generator is trained (the RpGAN loss and the generator step are not part of the technique): the "
         "discriminator learns to tell 500 real training images from 500 samples of a fixed generator (a "
         "20-component PCA Gaussian of the training images); test_acc is its real-vs-fake accuracy on real test "
         "images and fresh fakes. gamma 1 (the docstring default; the paper tunes gamma per dataset).",
)

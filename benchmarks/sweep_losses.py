"""Sweep group: losses (`keras_reg.losses`, the deep-supervision companion loss) in the sweep network's loss slot,
or, where the loss needs another setting, in the smallest version of that setting built around the same network:

* self-supervised losses (SimSiam, Barlow Twins with mixed samples, the two uniformity losses): the sweep network's
  conv stack and 64-unit hidden layer as the encoder, trained on two augmented views of each image without labels;
  its test accuracy is that of a linear probe (logistic regression on the 64-d hidden features, fitted at the end
  of training on the training labels);
* source-free adaptation (prior-aware entropy): the plain network trained as the plain arm is (the source model),
  then adapted without labels on noisy training images (the target domain);
* soft targets: distillation from a plain network trained as the plain arm is (the teacher);
* deep supervision: companion heads on both conv blocks of the sweep network.
"""

import numpy as np

from benchmarks import registry
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import LEARNING_RATE
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group
from benchmarks.sweep import not_worse
from benchmarks.sweep import sweep_cnn

TARGET_NOISE = 0.4  # the target domain of the source-free adaptation: additive N(0, 0.4^2) pixel noise, clipped


# -- helpers ------------------------------------------------------------------------------------------------------


def _noisy(x, seed):
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, TARGET_NOISE, x.shape), 0.0, 1.0).astype(x.dtype)


def _probs(net, x):
    out = np.asarray(net.predict(x, batch_size=1000, verbose=0), "float64")
    if out.min() >= 0 and np.allclose(out.sum(-1), 1.0, atol=1e-3):  # a softmax output already
        return out
    out = np.exp(out - out.max(-1, keepdims=True))
    return out / out.sum(-1, keepdims=True)


def _embedding(r, x):
    """The 64-d hidden representation (after the hidden ReLU) of `x`: the SSL arms' encoder, or the sweep network's."""
    import keras

    encoder = r.ctx.extra.get("encoder")
    if encoder is None:
        encoder = keras.Model(r.net.inputs, r.net.get_layer("act_hidden").output)
    return np.asarray(encoder.predict(x, batch_size=1000, verbose=0), "float64")


def _unit(z):
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


# -- target metrics -----------------------------------------------------------------------------------------------


@metric("loss_pred_entropy", "mean entropy (nats) of the test predictions' class probabilities")
def _pred_entropy(r):
    p = _probs(r.net, r.ctx.data.x_test)
    return float(np.mean(-np.sum(p * np.log(np.maximum(p, 1e-12)), -1)))


@metric("loss_worst_class_acc", "lowest per-class test accuracy (recall) over the 10 classes", pct=True)
def _worst_class(r):
    predicted = _probs(r.net, r.ctx.data.x_test).argmax(-1)
    y = r.ctx.data.y_test
    return float(min(np.mean(predicted[y == k] == k) for k in np.unique(y)))


@metric("loss_noisy_acc", f"test accuracy on the target domain of the adaptation: test images with N(0, "
        f"{TARGET_NOISE}^2) pixel noise (fixed), clipped to [0, 1]", pct=True)
def _noisy_acc(r):
    x = _noisy(r.ctx.data.x_test, seed=12345)
    return float(np.mean(_probs(r.net, x).argmax(-1) == r.ctx.data.y_test))


@metric("loss_w2_uniformity", "Fang et al.'s W2 uniformity of the l2-normalised hidden test features: W2 distance "
        "of their Gaussian fit to N(0, I/m) (lower: more uniform)", higher=False)
def _w2_uniformity(r):
    z = _unit(_embedding(r, r.ctx.data.x_test))
    m = z.shape[1]
    mu, cov = z.mean(0), np.cov(z, rowvar=False, bias=True)
    root_trace = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 0.0)))
    return float(np.sqrt(max(mu @ mu + 1.0 + np.trace(cov) - 2.0 / np.sqrt(m) * root_trace, 0.0)))


@metric("loss_lse_uniformity", "Wang & Isola's uniformity log mean exp(-2 ||u - v||^2) over pairs of l2-normalised "
        "hidden test features (lower: more uniform)", higher=False)
def _lse_uniformity(r):
    z = _unit(_embedding(r, r.ctx.data.x_test))
    d2 = np.maximum(2.0 - 2.0 * z @ z.T, 0.0)[np.triu_indices(len(z), 1)]
    return float(np.log(np.mean(np.exp(-2.0 * d2))))


@metric("loss_redundancy", "mean squared off-diagonal correlation between the hidden test features (Barlow "
        "Twins' redundancy; dead features count as uncorrelated)", higher=False)
def _redundancy(r):
    z = _embedding(r, r.ctx.data.x_test)
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-8)
    c = z.T @ z / len(z)
    return float(np.mean(c[~np.eye(len(c), dtype=bool)] ** 2))


@metric("loss_embed_erank", "effective rank (exp of the entropy of the normalised singular values) of the centred "
        "l2-normalised hidden test features: 1 when collapsed to a line, up to 64")
def _erank(r):
    z = _unit(_embedding(r, r.ctx.data.x_test))
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(np.maximum(p, 1e-12)))))


# -- self-supervised setting: a Siamese network around the sweep network's encoder -------------------------------

_SIAMESE = []


def _siamese_class():
    """A Keras model that maps (batch, V, 28, 28, 1) view stacks to the SSL loss's (batch, ., 64) input and plain
    (batch, 28, 28, 1) images to the linear probe's logits (what the harness's accuracy metrics see)."""
    if _SIAMESE:
        return _SIAMESE[0]
    import keras
    from keras import ops

    class Siamese(keras.Model):
        def __init__(self, encoder, augment, probe, predictor=None, projector=None, **kwargs):
            super().__init__(name="ssl_siamese", **kwargs)
            self.encoder, self.augment, self.probe, self.predictor = encoder, augment, probe, predictor
            self.projector = projector

        def call(self, x, training=False):
            if len(x.shape) == 4:
                return self.probe(self.encoder(x))
            z = [self.encoder(self.augment(x[:, v], training=training), training=training) for v in range(x.shape[1])]
            if self.projector is not None:
                z = [self.projector(zv) for zv in z]
            if self.predictor is None:
                return ops.stack(z, axis=1)
            # SimSiam: [p1, p2, z1, z2], the stop-gradient on z is in the loss.
            return ops.stack([self.predictor(z[0]), self.predictor(z[1]), z[0], z[1]], axis=1)

    _SIAMESE.append(Siamese)
    return Siamese


def _ssl_net(simsiam=False, with_projector=False):
    def build(ctx):
        import keras

        net = sweep_cnn(ctx)
        encoder = keras.Model(net.inputs, net.get_layer("act_hidden").output, name="encoder")
        # Views: random shifts of up to 4 pixels and horizontal flips (garments are left-right symmetric),
        # drawn anew every step inside the model; no colour jitter or crops for 28x28 grey images.
        augment = keras.Sequential([keras.layers.RandomTranslation(0.15, 0.15, fill_mode="constant", seed=ctx.seed),
                                    keras.layers.RandomFlip("horizontal", seed=ctx.seed + 1)], name="augment")
        # SimSiam's predictor: a bottleneck MLP (the paper's 2048-512-2048, here 64-16-64).
        predictor = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(64)],
                                     name="predictor") if simsiam else None
        # Barlow Twins standardises each feature over the batch: a linear projector (the paper's is a 3-layer MLP)
        # keeps a dead ReLU feature of the encoder from giving a zero std.
        projector = keras.layers.Dense(64, name="projector") if with_projector else None
        for layer in (predictor, projector):  # built now: a RegularizedModel builds its optimizer before any call
            if layer is not None:
                layer.build((None, 64))
        ctx.extra["encoder"] = encoder
        return _siamese_class()(encoder, augment, keras.layers.Dense(ctx.data.num_classes, name="probe"), predictor,
                                projector)

    return build


def _two_views(ctx, x):
    return np.repeat(x[:, None], 2, axis=1)  # each view is augmented inside the model


def _probe_callback(ctx, model):
    """Fits the linear probe when training ends: logistic regression on the standardised hidden features of the
    training images with their labels, folded into the `probe` Dense layer."""
    import keras
    from sklearn.linear_model import LogisticRegression

    class LinearProbe(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            siamese = registry.common.inner_model(model)
            f = siamese.encoder.predict(ctx.data.x_train, batch_size=1000, verbose=0)
            mean, std = f.mean(0), np.maximum(f.std(0), 1e-6)
            fit = LogisticRegression(max_iter=500).fit((f - mean) / std, ctx.data.y_train)
            kernel = (fit.coef_ / std).T
            if not siamese.probe.built:  # the cost stage fits the same model several times
                siamese.probe.build((None, f.shape[1]))
            siamese.probe.set_weights([kernel.astype("float32"),
                                       (fit.intercept_ - mean @ kernel).astype("float32")])

    return [LinearProbe()]


def _ssl(arm_name, technique, loss, claims, simsiam=False, projector=False, **kwargs):
    kwargs.setdefault("labels", lambda ctx, y: np.zeros(len(y), "float32"))
    return entry(technique, arm_name, claims=claims, net=_ssl_net(simsiam, projector), loss=loss, inputs=_two_views,
                 callbacks=_probe_callback, **kwargs)


def _aligned_w2(ctx):
    """Alignment (mean squared distance of the two normalised views, Wang & Isola) plus the W2 uniformity loss:
    Fang et al. add their uniformity term to an SSL loss that aligns the views."""
    from keras import ops

    w2 = _obj("keras_reg.losses.WassersteinUniformityLoss")()

    def loss(y_true, y_pred):
        z = y_pred / ops.maximum(ops.norm(y_pred, axis=-1, keepdims=True), 1e-12)
        return ops.mean(ops.sum(ops.square(z[:, 0] - z[:, 1]), -1)) + w2(y_true, y_pred)

    return loss


# -- other settings -----------------------------------------------------------------------------------------------


def _ce_trained(ctx, **kwargs):
    """The sweep network trained exactly as the plain arm is (CE, Adam, the group's epochs and batch size)."""
    import keras

    net = sweep_cnn(ctx, **kwargs)
    net.compile(keras.optimizers.Adam(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(ctx.data.x_train, ctx.data.y_train, batch_size=ctx.batch_size, epochs=ctx.epochs, verbose=0, shuffle=True)
    return net


def _teacher_targets(temperature):
    def labels(ctx, y):
        logits = _ce_trained(ctx).predict(ctx.data.x_train, batch_size=1000, verbose=0) / temperature
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)).astype("float32")

    return labels


def deep_supervision_net(ctx, weight=0.3):
    """The sweep network (softmax output) with a companion head (global pooling, Dense, softmax) after each conv
    block; fitted as the multi-output training model, measured as the plain network (`model` attribute)."""
    net = sweep_cnn(ctx, softmax=True)
    ds = _obj("keras_reg.training.DeepSupervision")(net, ["pool0", "pool1"], num_classes=ctx.data.num_classes,
                                                     weight=weight)
    ctx.extra["deep_supervision"] = ds
    training = ds.training_model
    object.__setattr__(training, "model", ds.export_model())  # what common.inner_model hands the metrics
    return training


def deep_supervision_kwargs():
    return dict(net=deep_supervision_net,
                loss=lambda ctx: ctx.extra["deep_supervision"].losses("sparse_categorical_crossentropy"),
                labels=lambda ctx, y: ctx.extra["deep_supervision"].targets(y))


group("sweep_losses", "A loss keeps the accuracy and moves the quantity it acts on.", entries=(
    # Pereyra et al. use beta in [0.1, 2]; the docstring's 0.1 on a 4-epoch run that is not yet overconfident.
    entry("Confidence penalty", "confidence penalty beta=0.1",
          loss=registry.component("keras_reg.losses.ConfidencePenalty", beta=0.1, from_logits=True),
          claims=(better("loss_pred_entropy", "the test predictions have a higher entropy (less confident)"),)),
    # CVaR at p=0.5 (the mean of the worse half of each batch's losses), a middle value of the paper's spectra;
    # the DRO claim: the worst-off group (here the worst class) does better.
    entry("Spectral-risk loss", "superquantile p=0.5", net=lambda ctx: sweep_cnn(ctx, softmax=True),
          loss=registry.component("keras_reg.losses.SpectralRiskLoss", base_loss="sparse_categorical_crossentropy",
                                  spectrum="superquantile", param=0.5),
          claims=(better("loss_worst_class_acc", "the worst class's test accuracy is higher"),)),
    # Hinton-style distillation: the teacher is a plain network trained as the plain arm (other init), tau = 4.
    entry("Soft-target cross-entropy", "distillation tau=4 (plain teacher)", labels=_teacher_targets(4.0),
          loss=registry.component("keras_reg.losses.SoftTargetCrossEntropy", temperature=4.0),
          claims=(better("test_acc", "the distilled network's test accuracy is higher"),)),
    # Deeply-supervised nets: alpha=0.3 companions (CE) after both conv blocks, no decay (the decay is the
    # callback row, in sweep_callbacks). The paper's claims: better accuracy, more discriminative features.
    entry("DSN companion objective", "companions alpha=0.3 (conv blocks)", **deep_supervision_kwargs(),
          claims=(better("test_acc", "the deeply supervised network's test accuracy is higher"),)),
    # Source-free adaptation: the source model (trained like the plain arm) adapted for the same number of epochs
    # on unlabelled noisy training images; uniform prior (balanced classes), lam = entropy weight = 1 as the
    # authors, power 1; Adam at 1/10 of the training rate (fine-tuning).
    entry("Prior-aware entropy (SFDA)", "SFDA entropy + KL(uniform prior), lr 2e-4", net=_ce_trained,
          loss=registry.component("keras_reg.losses.PriorAwareEntropy", prior=[0.1] * 10, lam=1.0,
                                  from_logits=True),
          optimizer=registry.adam(LEARNING_RATE / 10), inputs=lambda ctx, x: _noisy(x, ctx.seed + 100),
          labels=lambda ctx, y: np.zeros((len(y), ctx.data.num_classes), "float32"),
          claims=(better("loss_noisy_acc", "the adapted model is more accurate on the noisy target domain than "
                                           "the source model"),)),
    _ssl("SimSiam (SSL, probe)", "SimSiam stop-gradient", lambda ctx: _obj("keras_reg.losses.SimSiamLoss")(),
         simsiam=True,
         claims=(not_worse("loss_embed_erank", "the SSL features do not collapse: effective rank not below the "
                                               "supervised network's"),)),
    _ssl("Barlow Twins + mixed view lambda=1/128 s=4 (SSL, linear projector, probe)", "Mixed Barlow Twins",
         registry.component("keras_reg.losses.MixedBarlowTwinsLoss", lambda_=1 / 128, mix_scale=4.0),
         techniques=(registry.component("keras_reg.training.MixedBarlowTwins", alpha=1.0, seed=lambda c: c.seed),),
         projector=True,
         labels=lambda ctx, y: np.zeros((len(y), 2), "float32"),
         claims=(better("loss_redundancy", "the features are less redundant (lower off-diagonal correlation)"),)),
    _ssl("decoupled uniformity t=2 (SSL, probe)", "Decoupled uniformity",
         registry.component("keras_reg.losses.DecoupledUniformityLoss", t=2.0),
         claims=(better("loss_lse_uniformity", "the features are more uniform on the sphere"),)),
    _ssl("alignment + W2 uniformity (SSL, probe)", "Wasserstein uniformity", _aligned_w2,
         claims=(better("loss_w2_uniformity", "the features are more uniform by the W2 metric"),)),
), metrics=("test_acc", "loss_pred_entropy", "loss_worst_class_acc", "loss_noisy_acc", "loss_w2_uniformity",
            "loss_lse_uniformity", "loss_redundancy", "loss_embed_erank"),
    note="Strengths: the papers' or the docstrings' defaults (each entry's comment says which). Settings that differ "
         "from the papers: the four self-supervised losses train the sweep network's encoder (conv stack + 64-unit "
         "hidden layer, the loss on the hidden ReLU features; only Barlow Twins gets a projector, a linear one, "
         "because its per-feature standardisation has no epsilon and a dead ReLU feature gives NaN) for the group's "
         "4 epochs on two views (random 4-pixel shifts and flips) of the 1,000 images, and their test accuracy is a "
         "linear probe fitted on the hidden features at the end (the papers: hundreds of epochs on ImageNet/CIFAR "
         "and probes on the backbone); the W2 uniformity is added to an alignment term, as the paper adds it to SSL "
         "losses. SFDA adapts a classifier (not a segmenter) from clean to noisy (sigma 0.4) images with the class "
         "proportions taken over each batch. Distillation uses the soft term alone (no hard-label term). DSN uses "
         "cross-entropy companions (not the squared hinge) without decay here. Not placed: BEER (needs a critic, "
         "consecutive state-action pairs and rewards of an RL task) and the Monge gap (needs a learned transport map "
         "between two distributions); neither has a slot in an image classifier.")

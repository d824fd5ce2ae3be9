import keras
import numpy as np
import pytest

from keras_reg.functional import at_perturbation
from keras_reg.functional import iat_perturbation
from keras_reg.layers import AttentionScorePerturbation
from keras_reg.layers import PerturbableMultiHeadAttention
from keras_reg.testing import contract
from keras_reg.training import AttentionAdversarialTraining
from keras_reg.training import RegularizedModel


def _iat_reference(a, g, eps):
    """Explicit pairs, float64: r_i = eps * normalize(sum_k <g_i, d_ik> d_ik), d_ik = unit(a_i - a_k)."""
    a, g = a.reshape(len(a), -1), g.reshape(len(g), -1)
    out = np.zeros_like(a)
    for i in range(len(a)):
        r = np.zeros(a.shape[1])
        for k in range(len(a)):
            d = a[i] - a[k]
            if np.linalg.norm(d) < 1e-9:
                continue
            d = d / np.linalg.norm(d)
            r += (g[i] @ d) * d
        out[i] = 0.0 if np.linalg.norm(r) == 0 else eps * r / np.linalg.norm(r)
    return out


def test_at_perturbation_is_the_per_sample_normalized_gradient():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 2, 4))
    g[1] = 0.0  # no gradient: no perturbation
    r = np.asarray(at_perturbation(g, 0.5))
    flat = g.reshape(3, -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    want = np.where(norms > 0, 0.5 * flat / np.maximum(norms, 1e-30), 0.0).reshape(g.shape)
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(r.reshape(3, -1), axis=1), [0.5, 0.0, 0.5], rtol=1e-5)


def test_iat_perturbation_matches_explicit_pairs_and_lies_in_the_span_of_differences():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 2, 3))
    a[3] = a[1]  # identical attentions: their pair has no direction
    g = rng.normal(size=(5, 2, 3))
    r = np.asarray(iat_perturbation(a, g, 0.7))
    np.testing.assert_allclose(r.reshape(5, -1), _iat_reference(a, g, 0.7), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(r.reshape(5, -1), axis=1), 0.7, rtol=1e-5)
    # r_i lies in span{a_i - a_k}: its residual after projecting on that span vanishes.
    flat = a.reshape(5, -1)
    for i in range(5):
        basis = (flat[i] - flat).T
        coef, *_ = np.linalg.lstsq(basis, r.reshape(5, -1)[i], rcond=None)
        np.testing.assert_allclose(basis @ coef, r.reshape(5, -1)[i], atol=1e-5)


def test_iat_perturbation_of_a_single_sample_batch_is_zero():
    r = np.asarray(iat_perturbation(np.ones((1, 4)), np.ones((1, 4)), 1.0))
    np.testing.assert_allclose(r, 0.0)


# Additive attention over T tokens: s = x u, a = softmax(s + r), pooled = sum_t a_t x_t, p = softmax(pooled W + b).
T, D, C = 4, 3, 3
U0 = np.array([[0.5], [-0.3], [0.2]])
W0 = np.array([[0.2, -0.1, 0.3], [0.0, 0.4, -0.2], [-0.3, 0.1, 0.1]])
B0 = np.array([0.1, 0.0, -0.1])


def _additive_attention_model():
    inputs = keras.Input((T, D))
    scores = keras.layers.Dense(1, use_bias=False, name="score", kernel_initializer=keras.initializers.Constant(U0))(inputs)
    scores = keras.layers.Reshape((T,))(scores)
    scores = AttentionScorePerturbation(name="hook")(scores)
    weights = keras.layers.Softmax()(scores)
    pooled = keras.layers.Dot(axes=(1, 1))([weights, inputs])
    logits = keras.layers.Dense(C, name="out", kernel_initializer=keras.initializers.Constant(W0),
                                bias_initializer=keras.initializers.Constant(B0))(pooled)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(logits))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _per_sample_losses(theta, x, y, r=None):
    u, W, b = theta[:D].reshape(D, 1), theta[D:D + D * C].reshape(D, C), theta[D + D * C:]
    s = (x @ u)[..., 0] + (0.0 if r is None else r)
    pooled = np.einsum("bt,btd->bd", _softmax(s), x)
    p = _softmax(pooled @ W + b)
    return -np.log(p[np.arange(len(y)), y])


@pytest.mark.parametrize("variant", ["at", "iat"])
def test_step_equals_float64_reference(variant):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, T, D))
    y = rng.integers(0, C, size=6)
    w = rng.uniform(0.5, 1.5, size=6)
    eps, lam, lr = 0.8, 0.6, 0.3
    model = RegularizedModel(_additive_attention_model(), [AttentionAdversarialTraining(eps, lam, variant)])
    model.compile(keras.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    history = model.fit(x.astype("float32"), y.astype("int32"), sample_weight=w.astype("float32"), batch_size=6,
                        epochs=1, verbose=0, shuffle=False)
    theta0 = np.concatenate([U0.ravel(), W0.ravel(), B0])
    s0 = (x @ U0)[..., 0]
    # dL/ds by central differences of the per-sample losses at the clean scores (only its direction matters).
    h = 1e-6
    g = np.zeros_like(s0)
    for t in range(T):
        e = np.zeros(T)
        e[t] = h
        g[:, t] = (_per_sample_losses(theta0, x, y, e) - _per_sample_losses(theta0, x, y, -e)) / (2 * h)
    g *= w[:, None] / len(y)
    if variant == "at":
        r = eps * g / np.linalg.norm(g, axis=1, keepdims=True)
    else:
        r = _iat_reference(s0, g, eps)
    adversarial = np.mean(w * _per_sample_losses(theta0, x, y, r))
    assert history.history["attention_adversarial_loss"][0] == pytest.approx(adversarial, rel=1e-5)

    def objective(theta):  # r held fixed (stop-gradient)
        return np.mean(w * _per_sample_losses(theta, x, y)) + lam * np.mean(w * _per_sample_losses(theta, x, y, r))

    grad = np.array([(objective(theta0 + h * e) - objective(theta0 - h * e)) / (2 * h) for e in np.eye(len(theta0))])
    want = theta0 - lr * grad
    got = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _additive_attention_logits_model():
    probs_model = _additive_attention_model()
    return keras.Model(probs_model.inputs, probs_model.get_layer("out").output)  # the logits, no softmax


@pytest.mark.parametrize("loss_kind", ["name", "object", "callable"])
def test_logits_network_adversarial_term_uses_from_logits(loss_kind):
    # regression: the adversarial loss could only be a Keras loss name with from_logits=False, so a network that
    # outputs logits had its adversarial term computed as if the logits were probabilities.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, T, D))
    y = rng.integers(0, C, size=6)
    eps, lam = 0.8, 0.6
    technique = {
        "name": lambda: AttentionAdversarialTraining(eps, lam, "at", from_logits=True),
        "object": lambda: AttentionAdversarialTraining(
            eps, lam, "at", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        "callable": lambda: AttentionAdversarialTraining(
            eps, lam, "at", loss=lambda t, p: keras.losses.sparse_categorical_crossentropy(t, p, from_logits=True)),
    }[loss_kind]()
    model = RegularizedModel(_additive_attention_logits_model(), [technique])
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x.astype("float32"), y.astype("int32"), batch_size=6, epochs=1, verbose=0, shuffle=False)
    theta0 = np.concatenate([U0.ravel(), W0.ravel(), B0])
    h = 1e-6
    g = np.zeros((6, T))
    for t in range(T):
        e = np.zeros(T)
        e[t] = h
        g[:, t] = (_per_sample_losses(theta0, x, y, e) - _per_sample_losses(theta0, x, y, -e)) / (2 * h) / len(y)
    r = eps * g / np.linalg.norm(g, axis=1, keepdims=True)
    # the reference: softmax cross-entropy of the logits (from_logits=True) at the perturbed scores
    adversarial = np.mean(_per_sample_losses(theta0, x, y, r))
    assert history.history["attention_adversarial_loss"][0] == pytest.approx(adversarial, rel=1e-5)
    if loss_kind == "name":  # the old behaviour (logits read as probabilities) gives another value
        wrong = RegularizedModel(_additive_attention_logits_model(), [AttentionAdversarialTraining(eps, lam, "at")])
        wrong.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        old = wrong.fit(x.astype("float32"), y.astype("int32"), batch_size=6, epochs=1, verbose=0, shuffle=False)
        assert abs(old.history["attention_adversarial_loss"][0] - adversarial) > 0.1


def test_loss_object_and_from_logits_config_roundtrip():
    at = AttentionAdversarialTraining(1.0, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    config = at.get_config()
    assert config["from_logits"] is False and isinstance(config["loss"], dict)
    again = AttentionAdversarialTraining.from_config(config)
    assert isinstance(again.loss, keras.losses.SparseCategoricalCrossentropy) and again.loss.get_config()["from_logits"]
    named = AttentionAdversarialTraining.from_config(AttentionAdversarialTraining(1.0, from_logits=True).get_config())
    assert named.from_logits and named.loss == "sparse_categorical_crossentropy"
    logits = np.array([[2.0, -1.0, 0.5]], "float32")
    np.testing.assert_allclose(np.asarray(named.loss_fn(np.array([0]), logits)),
                               [-np.log(_softmax(logits.astype(np.float64))[0, 0])], rtol=1e-5)
    with pytest.raises(ValueError, match="from_logits"):
        AttentionAdversarialTraining(loss="mse", from_logits=True)
    with pytest.raises(ValueError, match="from_logits"):
        AttentionAdversarialTraining(loss=keras.losses.SparseCategoricalCrossentropy(), from_logits=True)


def test_extra_passes_leave_batchnorm_statistics_alone():
    inputs = keras.Input((T, D))
    h = keras.layers.BatchNormalization(momentum=0.5)(inputs)
    h = PerturbableMultiHeadAttention(1, 2, name="attention")(h, h)
    outputs = keras.layers.Dense(C, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    net = keras.Model(inputs, outputs)
    model = RegularizedModel(net, [AttentionAdversarialTraining(1.0, variant="iat")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(3).normal(size=(8, T, D)).astype("float32") + 2.0
    model.fit(x, np.zeros(8, "int32"), batch_size=8, epochs=1, verbose=0)
    np.testing.assert_allclose(net.layers[1].moving_mean.numpy(), 0.5 * x.reshape(-1, D).mean(0), rtol=1e-5)


def test_layer_selection_and_errors():
    with pytest.raises(ValueError, match="AttentionScorePerturbation"):
        RegularizedModel(contract.dense_classifier(), [AttentionAdversarialTraining()])
    with pytest.raises(ValueError, match="layers"):
        RegularizedModel(_additive_attention_model(), [AttentionAdversarialTraining(layers="missing")])
    model = RegularizedModel(_additive_attention_model(), [AttentionAdversarialTraining(layers=["hook"])])
    assert model.techniques[0]._names == {"hook"}


def _mha_classifier(t=None):
    inputs = keras.Input((5, 6))
    h = PerturbableMultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(3)(h)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(outputs))


for _variant in ("at", "iat"):
    contract.install(
        contract.ComponentCase(
            name=f"attention_adversarial_training_{_variant}",
            make=lambda v=_variant: AttentionAdversarialTraining(epsilon=1.0, lam=1.0, variant=v, layers="attention"),
            model=_mha_classifier,
            data=lambda: contract.classification_data((5, 6)),
            wrap=lambda model, t: RegularizedModel(model, [t]),
            distributed=True,
            bad_args=[
                (lambda: AttentionAdversarialTraining(epsilon=0.0), "epsilon"),
                (lambda: AttentionAdversarialTraining(lam=-1.0), "lam"),
                (lambda: AttentionAdversarialTraining(variant="vat"), "variant"),
                (lambda: AttentionAdversarialTraining(layers=3), "layers"),
                (lambda: AttentionAdversarialTraining(loss=None), "loss"),
                (lambda: AttentionAdversarialTraining(loss="mse", from_logits=True), "from_logits"),
            ],
        ),
        globals(),
    )

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reg import functional
from keras_reg import initializers as keras_reg_initializers
from keras_reg.layers import Dice
from keras_reg.layers import FourierActivation
from keras_reg.layers import HermiteActivation
from keras_reg.layers import TropicalActivation
from keras_reg.layers import TropicalRationalActivation
from keras_reg.layers import Mish
from keras_reg.layers import Sine
from keras_reg.layers import StableMax
from keras_reg.testing import contract


def _grad(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


# --------------------------------------------------------------------------------------------------------- StableMax
def s_ref(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))


def ds_ref(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0, 1 / (1 - np.minimum(x, 0)) ** 2)


def test_stablemax_value_and_jacobian_match_float64_reference():
    x = np.array([[-3.0, -0.5, 0.0, 0.7, 2.5], [10.0, -10.0, 1.0, -1.0, 0.1]])
    w = np.random.default_rng(0).normal(size=x.shape)
    p, g = _grad(lambda t: tf.reduce_sum(StableMax(dtype="float64")(t) * w), x.astype("float64"))
    s = s_ref(x)
    total = s.sum(-1, keepdims=True)
    expected = s / total
    np.testing.assert_allclose(StableMax(dtype="float64")(x).numpy(), expected, rtol=1e-12)
    # d/dx_j sum_i w_i s_i / S = s'_j (w_j S - sum_i w_i s_i) / S^2
    expected_grad = ds_ref(x) * (w * total - (w * s).sum(-1, keepdims=True)) / total**2
    np.testing.assert_allclose(g, expected_grad, rtol=1e-10)


def test_stablemax_closed_forms_and_edge_cases():
    # s(0) = 1 and s(x) s(-x) relation: s(-x) = 1 / (1 + x) = 1 / s(x) for x >= 0.
    x = np.linspace(0, 50, 11)
    np.testing.assert_allclose(functional.stablemax_s(-x).numpy() * functional.stablemax_s(x).numpy(), 1.0)
    # Equal logits give the uniform distribution; outputs sum to 1 and are monotone in the logit.
    np.testing.assert_allclose(StableMax(dtype="float64")(np.zeros((2, 4), "float32")).numpy(), 0.25)
    logits = np.array([[1e4, 0.0, -1e4]], "float32")
    p = StableMax(dtype="float64")(logits).numpy()
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(p, s_ref(logits) / s_ref(logits).sum(), rtol=1e-5)
    assert p[0, 0] < 1.0  # softmax rounds this to exactly 1.0 in float32 (Softmax Collapse)
    assert float(keras.ops.softmax(logits)[0, 0]) == 1.0
    # Gradients stay finite and non-zero where softmax's vanish.
    _, g = _grad(lambda t: tf.math.log(StableMax(dtype="float64")(t)[0, 0]), logits)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    np.testing.assert_allclose(
        functional.log_stablemax(logits).numpy(), np.log(s_ref(logits) / s_ref(logits).sum()), rtol=1e-6, atol=1e-6
    )


def test_stablemax_axis():
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(StableMax(axis=0)(x).numpy().sum(axis=0), 1.0, rtol=1e-6)


# -------------------------------------------------------------------------------------------------------------- Mish
def test_mish_value_and_derivative_match_closed_forms():
    x = np.concatenate([np.linspace(-30, 30, 241), [-1.19237]])
    y, g = _grad(lambda t: Mish(dtype="float64")(t), x)
    sp = np.logaddexp(0, x)
    np.testing.assert_allclose(y, x * np.tanh(sp), rtol=1e-12, atol=1e-300)
    sigmoid = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(g, np.tanh(sp) + x * (1 - np.tanh(sp) ** 2) * sigmoid, rtol=1e-9, atol=1e-12)
    # The minimum of about -0.30884 at x about -1.19237; equals keras.activations.mish.
    assert y.min() == pytest.approx(-0.308834, abs=1e-5)
    np.testing.assert_allclose(y, keras.activations.mish(x).numpy(), rtol=1e-12, atol=1e-300)


# -------------------------------------------------------------------------------------------------------------- Sine
def test_sine_value_and_gradient():
    x = np.linspace(-1, 1, 21)
    y, g = _grad(lambda t: Sine(w0=30.0, dtype="float64")(t), x)
    np.testing.assert_allclose(y, np.sin(30 * x), atol=1e-12)
    np.testing.assert_allclose(g, 30 * np.cos(30 * x), atol=1e-10)


# -------------------------------------------------------------------------------------------------------------- Dice
def dice_ref(x, mean, var, alpha, eps=1e-8):
    p = 1 / (1 + np.exp(-(x - mean) / np.sqrt(var + eps)))
    return p * x + (1 - p) * alpha * x


def test_dice_training_uses_batch_statistics_and_updates_moving_averages():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=1.0, scale=2.0, size=(16, 5))
    layer = Dice(momentum=0.9, alpha_initializer=keras.initializers.Constant(0.25), dtype="float64")
    y = layer(x, training=True).numpy()
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, dice_ref(x, mean, var, 0.25), rtol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-6)
    # Inference uses the moving averages.
    z = rng.normal(size=(3, 5))
    expected = dice_ref(z, layer.moving_mean.numpy(), layer.moving_variance.numpy(), 0.25)
    np.testing.assert_allclose(layer(z, training=False).numpy(), expected, rtol=1e-6)


def test_dice_gradients_match_finite_differences_of_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3))
    w = rng.normal(size=(6, 3))
    layer = Dice(alpha_initializer=keras.initializers.Constant(0.3), dtype="float64")
    layer.build(x.shape)
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt, training=True) * w)
    gx = tape.gradient(loss, xt).numpy()
    galpha = tape.gradient(loss, layer.alpha).numpy()

    def f(xv, alpha):
        return np.sum(dice_ref(xv, xv.mean(0), xv.var(0), alpha) * w)

    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (f(xp, 0.3) - f(xm, 0.3)) / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)
    p = 1 / (1 + np.exp(-(x - x.mean(0)) / np.sqrt(x.var(0) + 1e-8)))
    np.testing.assert_allclose(galpha, ((1 - p) * x * w).sum(0), rtol=1e-10)


def test_dice_limits():
    x = np.random.default_rng(4).normal(size=(8, 4)).astype("float32")
    # alpha = 1: f(s) = s whatever p is.
    identity = Dice(alpha_initializer="ones")
    np.testing.assert_allclose(identity(x, training=True).numpy(), x, rtol=1e-6)
    # Constant features: Var = 0, s = E[s] gives p = 1/2 and f = (1 + alpha) s / 2.
    const = np.full((4, 2), 3.0, "float32")
    half = Dice(alpha_initializer=keras.initializers.Constant(0.5))(const, training=True).numpy()
    np.testing.assert_allclose(half, 0.75 * 3.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------- Hermite
def hermite_ref(x, coefficients):
    """float64: sum_k a_k He_k(x) / k! with numpy's probabilists' Hermite series."""
    from math import factorial

    from numpy.polynomial import hermite_e

    scaled = [a / factorial(k) for k, a in enumerate(coefficients)]
    return hermite_e.hermeval(x, scaled), hermite_e.hermeval(x, hermite_e.hermeder(scaled))


def test_hermite_basis_value_and_gradients_match_numpy_series():
    x = np.linspace(-3, 3, 25)
    a = np.array([0.3, -0.7, 1.1, 0.4, -0.2])
    layer = HermiteActivation(4, coefficient_initializer=keras.initializers.Constant(a), dtype="float64")
    y, g = _grad(lambda t: layer(t), x)
    ref, dref = hermite_ref(x, a)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, dref, rtol=1e-12, atol=1e-12)
    # d F / d a_k = He_k(x) / k! at every x.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(xt))
    ga = tape.gradient(total, layer.coefficients).numpy()
    expected = [hermite_ref(x, np.eye(5)[k])[0].sum() for k in range(5)]
    np.testing.assert_allclose(ga, expected, rtol=1e-12, atol=1e-12)


def test_hermite_init_preserves_the_second_moment_of_a_standard_normal():
    from math import e
    from math import factorial

    from numpy.polynomial import hermite_e

    for degree in (1, 3, 6):
        a = np.asarray(functional.hermite_init_coefficients(degree))
        assert a[0] == pytest.approx(np.sqrt(1 - 1 / factorial(degree)) / np.sqrt(e))
        np.testing.assert_allclose(a[1:], 1 / np.sqrt(e))
        # E[F(z)^2] by Gauss-Hermite quadrature (exact for polynomials) vs the closed form.
        nodes, weights = hermite_e.hermegauss(2 * degree + 2)
        second = np.sum(weights * hermite_ref(nodes, a)[0] ** 2) / np.sqrt(2 * np.pi)
        assert second == pytest.approx(sum(1 / factorial(k) for k in range(degree)) / e, rel=1e-10)
    z = np.random.default_rng(5).normal(size=200000).astype("float32")
    y = HermiteActivation(6)(z).numpy().astype(np.float64)
    assert np.mean(y**2) == pytest.approx(sum(1 / factorial(k) for k in range(6)) / e, rel=0.03)


# ----------------------------------------------------------------------------------------------- Fourier / tropical
def _set(layer, **values):
    for name, value in values.items():
        getattr(layer, name).assign(np.asarray(value, "float64"))


def test_fourier_value_and_all_gradients_match_float64_reference():
    from math import factorial

    x = np.linspace(-3, 3, 31)
    a0, a = 0.4, np.array([0.7, -1.2, 0.5])
    w, phi = np.array([0.9, 2.1, 3.3]), np.array([0.2, -0.4, 1.0])
    fact = np.array([factorial(k) for k in (1, 2, 3)], float)
    layer = FourierActivation(3, dtype="float64")
    layer.build((None,))
    _set(layer, fundamental=a0, coefficients=a, frequencies=w, phases=phi)
    z = w * x[:, None] - phi
    ref = a0 + np.sum(a * np.cos(z) / fact, axis=1)
    dref = np.sum(-a * w * np.sin(z) / fact, axis=1)
    y, g = _grad(lambda t: layer(t), x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, dref, rtol=1e-12, atol=1e-12)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(tf.constant(x)))
    ga0, ga, gw, gphi = [t.numpy() for t in tape.gradient(total, [layer.fundamental, layer.coefficients,
                                                                    layer.frequencies, layer.phases])]
    assert ga0 == pytest.approx(len(x))
    np.testing.assert_allclose(ga, np.sum(np.cos(z) / fact, axis=0), rtol=1e-12)
    np.testing.assert_allclose(gw, np.sum(-a * x[:, None] * np.sin(z) / fact, axis=0), rtol=1e-12)
    np.testing.assert_allclose(gphi, np.sum(a * np.sin(z) / fact, axis=0), rtol=1e-12)


def test_fourier_init_is_the_codes_and_its_squared_weights_sum_to_the_bessel_ratio():
    from math import factorial
    from math import pi

    i0_2 = sum(1 / factorial(k) ** 2 for k in range(30))
    for n in (1, 2, 4, 7):
        layer = FourierActivation(n, dtype="float64")
        layer.build((None,))
        a0, a = float(layer.fundamental.numpy()), layer.coefficients.numpy()
        # (Keras' Constant initializer goes through float32.)
        assert a0 == pytest.approx(0.66232645879 * np.sqrt(1 - 1 / factorial(n) ** 2), rel=1e-7)
        np.testing.assert_allclose(a, 0.66232645879, rtol=1e-7)
        np.testing.assert_allclose(layer.frequencies.numpy(), np.arange(1, n + 1))
        np.testing.assert_allclose(layer.phases.numpy(), pi / 4, rtol=1e-7)
        squared = a0**2 + np.sum((a / np.array([factorial(k) for k in range(1, n + 1)], float)) ** 2)
        assert squared == pytest.approx(sum(1 / factorial(k) ** 2 for k in range(n)) / i0_2, rel=1e-6)
    assert 0.66232645879 == pytest.approx(i0_2 ** -0.5, rel=1e-7)


def test_tropical_value_and_gradients_match_the_max_plus_reference():
    x = np.array([-2.3, -0.7, -0.1, 0.35, 0.9, 1.7, 2.6])
    a = np.array([0.5, -0.2, 0.9, -1.4])  # distinct, so the arg max is unique at these points
    layer = TropicalActivation(3, coefficient_initializer=keras.initializers.Constant(a), dtype="float64")
    terms = x[:, None] * np.arange(4) + a
    best = terms.argmax(axis=1)
    y, g = _grad(lambda t: layer(t), x)
    np.testing.assert_allclose(y, np.sqrt(2) / 3 * terms.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(g, np.sqrt(2) / 3 * best, rtol=1e-12)  # slope = the active power
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(tf.constant(x)))
    ga = tape.gradient(total, layer.coefficients).numpy()
    np.testing.assert_allclose(ga, np.sqrt(2) / 3 * np.bincount(best, minlength=4), rtol=1e-12)


def test_tropical_init_is_a_he_scaled_relu():
    x = np.linspace(-3, 3, 13)
    for n in (1, 3, 5):
        y = TropicalActivation(n, dtype="float64")(x).numpy()
        np.testing.assert_allclose(y, np.sqrt(2) * np.maximum(x, 0) + np.sqrt(2) / n, rtol=1e-12)


def test_tropical_rational_value_and_gradients_match_reference():
    rng = np.random.default_rng(2)
    p, c, q, d = (rng.normal(size=3) for _ in range(4))
    x = np.array([-1.9, -0.6, 0.15, 0.8, 2.2])
    layer = TropicalRationalActivation(2, dtype="float64")
    layer.build((None,))
    _set(layer, powers_num=p, coefficients_num=c, powers_den=q, coefficients_den=d)
    num, den = x[:, None] * p + c, x[:, None] * q + d
    i, j = num.argmax(1), den.argmax(1)
    y, g = _grad(lambda t: layer(t), x)
    np.testing.assert_allclose(y, num.max(1) - den.max(1), rtol=1e-12)
    np.testing.assert_allclose(g, p[i] - q[j], rtol=1e-12)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(tf.constant(x)))
    gp, gc, gq, gd = [t.numpy() for t in tape.gradient(
        total, [layer.powers_num, layer.coefficients_num, layer.powers_den, layer.coefficients_den])]
    np.testing.assert_allclose(gp, np.bincount(i, weights=x, minlength=3), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gc, np.bincount(i, minlength=3), rtol=1e-12)
    np.testing.assert_allclose(gq, -np.bincount(j, weights=x, minlength=3), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gd, -np.bincount(j, minlength=3), rtol=1e-12)
    seeded = [TropicalRationalActivation(2, seed=7) for _ in range(2)]
    for layer in seeded:
        layer.build((None,))
    np.testing.assert_array_equal(seeded[0].powers_num.numpy(), seeded[1].powers_num.numpy())
    assert not np.allclose(seeded[0].powers_num.numpy(), seeded[0].coefficients_num.numpy())



def test_tropical_rational_unseeded_draws_four_independent_vectors():
    # regression: one stateless RandomNormal called four times gave p == c == q == d, so R(x) = 0 and no gradient.
    def draw(**kwargs):
        keras.utils.set_random_seed(11)
        layer = TropicalRationalActivation(2, **kwargs)
        layer.build((None, 4))
        return layer, [w.numpy() for w in (layer.powers_num, layer.coefficients_num,
                                           layer.powers_den, layer.coefficients_den)]

    layer, vectors = draw()
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(vectors[a], vectors[b])
    x = tf.constant(np.linspace(-2.0, 2.0, 12).reshape(3, 4), tf.float32)
    y, g = _grad(lambda t: layer(t), x)
    assert np.abs(y).max() > 1e-3 and np.abs(g).max() > 1e-3
    np.testing.assert_array_equal(np.stack(vectors), np.stack(draw()[1]))  # reproducible under the global seed
    _, uniform = draw(initializer=keras.initializers.RandomUniform(-1.0, 1.0))
    assert not np.allclose(uniform[0], uniform[2]) and np.all(np.abs(np.stack(uniform)) <= 1.0)
    _, seeded = draw(initializer=keras.initializers.RandomUniform(-1.0, 1.0), seed=3)
    assert not np.allclose(seeded[0], seeded[1])


# ---------------------------------------------------------------------------------------------------------- contract
def _output_model(layer):
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras.layers.Dense(contract.NUM_CLASSES)(h)
    return keras.Model(inputs, layer(h))


contract.install(
    contract.ComponentCase(
        name="stablemax",
        make=lambda: StableMax(dtype="float32"),
        model=_output_model,
        bad_args=[(lambda: StableMax(axis=1.5), "axis"), (lambda: StableMax(axis=None), "axis")],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="mish",
        make=lambda: Mish(),
        model=lambda layer: contract.dense_classifier(middle=layer),
        bad_args=[(lambda: Mish(dtype="not-a-dtype"), "dtype")],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="sine",
        make=lambda: Sine(w0=3.0),
        model=lambda layer: contract.dense_classifier(middle=layer),
        bad_args=[(lambda: Sine(w0=0.0), "w0"), (lambda: Sine(w0=float("inf")), "w0")],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="dice",
        make=lambda: Dice(),
        model=lambda layer: contract.dense_classifier(middle=layer),
        distributed=True,
        bad_args=[
            (lambda: Dice(momentum=1.0), "momentum"),
            (lambda: Dice(epsilon=0.0), "epsilon"),
            (lambda: Dice(epsilon=float("nan")), "epsilon"),
            (lambda: Dice(axis="last"), "axis"),
        ],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="hermite_activation",
        make=lambda: HermiteActivation(3),
        model=lambda layer: contract.dense_classifier(middle=layer),
        save_atol=1e-5,
        bad_args=[
            (lambda: HermiteActivation(0), "degree"),
            (lambda: HermiteActivation(2.0), "degree"),
            (lambda: keras_reg_initializers.HermiteCoefficients()((2, 2)), "shape"),
        ],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="fourier_activation",
        make=lambda: FourierActivation(3),
        model=lambda layer: contract.dense_classifier(middle=layer),
        save_atol=1e-5,
        bad_args=[(lambda: FourierActivation(0), "degree"), (lambda: FourierActivation(True), "degree")],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="tropical_activation",
        make=lambda: TropicalActivation(3),
        model=lambda layer: contract.dense_classifier(middle=layer),
        bad_args=[(lambda: TropicalActivation(0), "degree"), (lambda: TropicalActivation(1.5), "degree")],
    ),
    globals(),
)

contract.install(
    contract.ComponentCase(
        name="tropical_rational_activation",
        make=lambda: TropicalRationalActivation(3, seed=0),
        model=lambda layer: contract.dense_classifier(middle=layer),
        bad_args=[
            (lambda: TropicalRationalActivation(-1), "degree"),
            (lambda: TropicalRationalActivation(2, seed=1.5), "seed"),
        ],
    ),
    globals(),
)

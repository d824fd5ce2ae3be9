import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reg import functional
from keras_reg.layers import EntropyRegularizedMultiHeadAttention
from keras_reg.testing import contract


def penalty_reference(probs, w, tolerance, context=None):
    """Independent float64 loops over batch, heads and queries."""
    probs = np.asarray(probs, np.float64)
    b, heads, tq, tk = probs.shape
    e_max = np.log(context or tk)
    total = 0.0
    for h in range(heads):
        for i in range(b):
            for q in range(tq):
                row = probs[i, h, q]
                entropy = -np.sum(row * np.log(row + 1e-9))
                dev = entropy - w[h] * e_max
                if abs(dev) > tolerance * e_max:
                    total += dev**2
    return total / heads


def test_functional_penalty_matches_reference_and_uniform_closed_form():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(3, 2, 4, 6))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    w = np.array([0.3, 0.9])
    for tol in (0.0, 0.1, 0.2):
        value = float(functional.entropy_deviation_penalty(probs.astype("float32"), w, tol))
        assert value == pytest.approx(penalty_reference(probs, w, tol), rel=1e-5)
    # Uniform rows have entropy log T exactly: w = 1 gives 0; w = 0.5, tol = 0 gives B Tq (0.5 log T)^2.
    uniform = np.full((2, 3, 5, 8), 1 / 8, "float32")
    assert float(functional.entropy_deviation_penalty(uniform, np.ones(3), 0.0)) == pytest.approx(0.0, abs=1e-9)
    expected = 2 * 5 * (0.5 * np.log(8)) ** 2
    value = float(functional.entropy_deviation_penalty(uniform, np.full(3, 0.5), 0.0))
    assert value == pytest.approx(expected, rel=1e-6)
    # Inside the tolerance band there is no penalty; context_size changes E_max.
    assert float(functional.entropy_deviation_penalty(uniform, np.full(3, 0.9), 0.2)) == 0.0
    value = float(functional.entropy_deviation_penalty(probs.astype("float32"), w, 0.1, context_size=32))
    assert value == pytest.approx(penalty_reference(probs, w, 0.1, context=32), rel=1e-5)


def test_layer_adds_penalty_of_its_own_attention_in_training_only():
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype("float32")
    layer = EntropyRegularizedMultiHeadAttention(num_heads=2, key_dim=3, factor=0.5, tolerance=0.05, threshold_init=0.2)
    _, scores = layer(x, x, return_attention_scores=True, training=False)
    assert layer.losses == []
    layer(x, x, training=True)
    assert len(layer.losses) == 1
    expected = 0.5 * penalty_reference(scores.numpy(), [0.2, 0.2], 0.05)
    assert expected > 0
    assert float(layer.losses[0]) == pytest.approx(expected, rel=1e-5)


def test_threshold_gradient_matches_closed_form():
    x = np.random.default_rng(2).normal(size=(2, 4, 4)).astype("float32")
    layer = EntropyRegularizedMultiHeadAttention(num_heads=2, key_dim=2, factor=1.0, tolerance=0.0, threshold_init=0.1)
    _, scores = layer(x, x, return_attention_scores=True)
    with tf.GradientTape() as tape:
        penalty = layer.entropy_penalty(scores)
    grad = tape.gradient(penalty, layer.threshold_weights).numpy()
    p = scores.numpy().astype(np.float64)
    entropy = -np.sum(p * np.log(p + 1e-9), axis=-1)  # (B, heads, Tq)
    e_max = np.log(4)
    # d/dw_h (1/H) sum (H - w_h E)^2 = -(2 E / H) sum_{b,q} (H - w_h E)
    expected = -(2 * e_max / 2) * (entropy - 0.1 * e_max).sum(axis=(0, 2))
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_training_the_thresholds_moves_them_toward_the_entropy():
    keras.utils.set_random_seed(0)  # the attention projections' draw sets how far the entropies spread
    x = np.random.default_rng(3).normal(size=(4, 6, 4)).astype("float32")
    layer = EntropyRegularizedMultiHeadAttention(num_heads=2, key_dim=2, factor=1e-2, tolerance=0.0, threshold_init=0.0)
    optimizer = keras.optimizers.SGD(0.5)
    first = None
    for _ in range(30):
        with tf.GradientTape() as tape:
            _, scores = layer(x, x, return_attention_scores=True)
            penalty = layer.entropy_penalty(scores)
        first = float(penalty) if first is None else first
        optimizer.apply_gradients([(tape.gradient(penalty, layer.threshold_weights), layer.threshold_weights)])
    assert float(penalty) < 0.1 * first
    assert np.all(layer.threshold_weights.numpy() > 0.5)  # near-uniform attention: entropy close to log T


def _attention_model(layer):
    inputs = keras.Input((6, 4))
    h = keras.layers.Dense(8)(inputs)
    h = layer(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(contract.NUM_CLASSES)(h)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(h))


contract.install(
    contract.ComponentCase(
        name="entropy_regularized_attention",
        make=lambda: EntropyRegularizedMultiHeadAttention(num_heads=2, key_dim=4, factor=1e-3),
        model=_attention_model,
        data=lambda: contract.classification_data((6, 4)),
        save_atol=1e-5,
        bad_args=[
            (lambda: EntropyRegularizedMultiHeadAttention(2, 4, factor=-1.0), "factor"),
            (lambda: EntropyRegularizedMultiHeadAttention(2, 4, tolerance=float("nan")), "tolerance"),
            (lambda: EntropyRegularizedMultiHeadAttention(2, 4, threshold_init=1.5), "threshold_init"),
            (lambda: EntropyRegularizedMultiHeadAttention(2, 4, context_size=0), "context_size"),
        ],
    ),
    globals(),
)

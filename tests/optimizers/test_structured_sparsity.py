import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reg.optimizers import DualHalfSpaceProjectedGradient
from keras_reg.testing import contract


def dhspg_reference(x, g, lr, marks, lmbda, amplify, hat, eps, target):
    """float64 transcription of one step of the public DHSPG 'sgd' variant on a (groups, d) matrix (no cap hit)."""
    x_hat = x - lr * g
    x_norm = np.linalg.norm(x, axis=1)
    below = np.mean(x_norm == 0) < target
    inner = np.sum(x * g, axis=1)
    lam = np.full(len(x), lmbda)
    if below:
        adj = (marks > 0) & (inner < 0)
        lower = -inner[adj] / x_norm[adj]
        upper = -(np.linalg.norm(g, axis=1)[adj] ** 2 * x_norm[adj]) / inner[adj]
        la = np.clip(amplify * lower, lmbda, lmbda * hat)
        la = np.where(la >= upper, (upper + lower) / 2, la)
        lam[adj] = la
    direction = np.where(x_norm[:, None] > 0, x / (x_norm[:, None] + 1e-8), 0)
    x_hat[marks > 0] -= lr * lam[marks > 0, None] * direction[marks > 0]
    if below:
        proj = (marks > 0) & (np.sum(x_hat * x, axis=1) < eps * x_norm**2)
        x_hat[proj] = 0
    x_hat[x_norm == 0] = 0
    return x_hat


def test_dhspg_step_matches_reference():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 6)) * 0.5
    bias = rng.normal(size=(6,)) * 0.1
    gk, gb = rng.normal(size=(5, 6)), rng.normal(size=(6,))
    gk[:, 1] = kernel[:, 1] * 30  # group 1 strongly along +x: the trial step crosses the half-space
    gb[1] = bias[1] * 30
    k_var = keras.Variable(kernel.astype("float32"), name="kernel")
    b_var = keras.Variable(bias.astype("float32"), name="bias")
    opt = DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["dense"], target_group_sparsity=0.5,
                                         lmbda=0.05, tolerance_group_sparsity=0.0)
    opt._pairs = [(k_var, b_var)]
    opt.apply([tf.constant(gk, "float32"), tf.constant(gb, "float32")], [k_var, b_var])
    # Partition at step 0 with the code's score: K = floor(6 * 0.5) = 3 groups.
    x = np.concatenate([kernel.T, bias[:, None]], axis=1)
    g = np.concatenate([gk.T, gb[:, None]], axis=1)
    cos = np.sum(x * g, 1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(g, axis=1), 1e-8)
    inv = 1 / (np.linalg.norm(x, axis=1) / x.shape[1] + 1e-6)
    scores = 0.5 * cos / np.linalg.norm(cos) + 0.5 * inv / np.linalg.norm(inv)
    marks = np.zeros(6)
    marks[np.argsort(-scores)[:3]] = 1
    np.testing.assert_array_equal(np.asarray(opt._redundant[0]), marks)
    expected = dhspg_reference(x, g, 0.1, marks, 0.05, 2.0, 10.0, 0.0, 0.5)
    got = np.concatenate([k_var.numpy().T, b_var.numpy()[:, None]], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert marks[1] == 1 and np.all(got[1] == 0)  # the crossing redundant group is exactly zero


def test_dhspg_reaches_target_and_zero_groups_can_be_removed():
    x, y = contract.classification_data()
    model = contract.dense_classifier(hidden=8)
    opt = DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["hidden"], target_group_sparsity=0.5,
                                         lmbda=0.5, hat_lmbda_coeff=10.0, partition_step=2, half_space_step=2)
    model.compile(opt, "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=15, verbose=0)
    kernel, bias = model.get_layer("hidden").kernel.numpy(), model.get_layer("hidden").bias.numpy()
    zero = (np.abs(kernel).sum(0) == 0) & (bias == 0)
    assert zero.sum() == 4 and float(opt.group_sparsity()) == pytest.approx(0.5)
    # Removing the zero units (and the matching rows of the next kernel) leaves the outputs unchanged.
    keep = ~zero
    w2, b2 = model.get_layer("logits").kernel.numpy(), model.get_layer("logits").bias.numpy()
    h = np.maximum(x @ kernel[:, keep] + bias[keep], 0)
    logits = h @ w2[keep] + b2
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-5)


def conv_and_dense_model():
    """Conv2D "conv" (groups of 3*3*2 + 1 = 19 entries) and Dense "dense" (groups of 4 + 1 = 5 entries)."""
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(6, activation="relu", name="dense")(h)
    h = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(h))


def test_dhspg_groups_of_different_sizes_conv_and_dense():
    # regression: the partition stacked the (groups, d) matrices of all layers, so a conv layer (d = 19) grouped
    # with a Dense layer (d = 5) raised a ValueError.
    keras.utils.set_random_seed(0)
    model = conv_and_dense_model()
    rng = np.random.default_rng(1)
    variables = model.trainable_variables
    before = {v.path: v.numpy().astype(np.float64) for v in variables}
    grads = {v.path: rng.normal(size=v.shape) * 0.5 for v in variables}
    grads["dense/kernel"][:, 2] = before["dense/kernel"][:, 2] * 40  # dense unit 2 crosses its half-space
    grads["dense/bias"][2] = before["dense/bias"][2] * 40 + 0.5
    opt = DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["conv", "dense"],
                                         target_group_sparsity=0.5, lmbda=0.05, tolerance_group_sparsity=0.0)
    opt.apply([tf.constant(grads[v.path], "float32") for v in variables], variables)

    def rows(prefix, values):
        kernel, bias = values[f"{prefix}/kernel"], values[f"{prefix}/bias"]
        return np.concatenate([kernel.reshape(-1, kernel.shape[-1]).T, bias[:, None]], axis=1)

    xs = [rows(n, before) for n in ("conv", "dense")]
    gs = [rows(n, grads) for n in ("conv", "dense")]
    assert [x.shape[1] for x in xs] == [19, 5]
    cos = np.concatenate([np.sum(x * g, 1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(g, axis=1), 1e-8)
                          for x, g in zip(xs, gs)])
    inv = np.concatenate([1 / (np.linalg.norm(x, axis=1) / x.shape[1] + 1e-6) for x in xs])
    scores = 0.5 * cos / np.linalg.norm(cos) + 0.5 * inv / np.linalg.norm(inv)
    marks = np.zeros(10)
    marks[np.argsort(-scores)[:5]] = 1  # K = floor(10 groups * 0.5), ranked over both layers together
    np.testing.assert_array_equal(np.concatenate([np.asarray(r) for r in opt._redundant]), marks)
    after = {v.path: v.numpy() for v in variables}
    for i, (name, x, g) in enumerate(zip(("conv", "dense"), xs, gs)):
        expected = dhspg_reference(x, g, 0.1, marks[4 * i: 4 * i + len(x)], 0.05, 2.0, 10.0, 0.0, 0.5)
        np.testing.assert_allclose(rows(name, after), expected, rtol=1e-5, atol=1e-6)
    assert marks[6] == 1 and np.all(rows("dense", after)[2] == 0)  # the crossing redundant Dense unit is zero
    x, y = contract.classification_data((8, 8, 2))
    keras.utils.set_random_seed(1)
    model = conv_and_dense_model()
    opt = DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["conv", "dense"],
                                         target_group_sparsity=0.5, lmbda=0.5, partition_step=2, half_space_step=2)
    model.compile(opt, "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(opt.group_sparsity()) == pytest.approx(0.5)  # 5 of the 10 conv filters and Dense units


def test_dhspg_resumes_with_its_partition(tmp_path):
    x, y = contract.classification_data()
    model = contract.dense_classifier()
    model.compile(DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["hidden"], lmbda=0.1),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded.optimizer._redundant[0]), np.asarray(model.optimizer._redundant[0]))
    assert float(loaded.optimizer._partitioned) == 1.0
    assert loaded.optimizer.layers == ["hidden"]


def test_unknown_layer_is_reported():
    x, y = contract.classification_data()
    model = contract.dense_classifier()
    model.compile(DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["nope"]), "mse")
    with pytest.raises(ValueError, match="nope"):
        model.fit(x, np.eye(3)[y], epochs=1, verbose=0)


contract.install(
    contract.ComponentCase(
        name="dhspg",
        make=lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(0.1), layers=["conv"], lmbda=0.01),
        model=lambda opt: contract.conv_classifier(),
        data=lambda: contract.classification_data((8, 8, 2)),
        optimizer=contract.COMPONENT,
        distributed=True,
        bad_args=[
            (lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(), layers="conv"), "layers"),
            (lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(), ["c"], target_group_sparsity=1.0),
             "target_group_sparsity"),
            (lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(), ["c"], lmbda=-1.0), "lmbda"),
            (lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(), ["c"], hat_lmbda_coeff=0.5),
             "hat_lmbda_coeff"),
            (lambda: DualHalfSpaceProjectedGradient(keras.optimizers.SGD(), ["c"], partition_step=-1), "partition_step"),
        ],
    ),
    globals(),
)

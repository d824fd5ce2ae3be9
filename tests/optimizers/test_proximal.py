import keras
import numpy as np
import tensorflow as tf

from keras_reg.optimizers import GroupLassoProximal
from keras_reg.optimizers import group_soft_threshold
from keras_reg.testing import contract


def test_block_soft_threshold_reference():
    g = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = np.asarray(group_soft_threshold(g, 1.0))
    np.testing.assert_allclose(out, [[3.0 * 0.8, 4.0 * 0.8], [0.0, 0.0], [0.0, 0.0]], atol=1e-7)


def test_wrapper_step_is_sgd_then_prox():
    rng = np.random.default_rng(0)
    k0, b0 = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    gk, gb = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d")])
    model.get_layer("d").kernel.assign(k0.astype("float32"))
    model.get_layer("d").bias.assign(b0.astype("float32"))
    opt = GroupLassoProximal(keras.optimizers.SGD(0.5), layers=["d"], lmbda=1.5)
    opt.apply([tf.constant(gk, "float32"), tf.constant(gb, "float32")], model.trainable_variables)
    rows = np.concatenate([(k0 - 0.5 * gk).T, (b0 - 0.5 * gb)[:, None]], axis=1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows * np.maximum(0, 1 - 0.75 / norms)
    np.testing.assert_allclose(model.get_layer("d").kernel.numpy(), rows[:, :3].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_layer("d").bias.numpy(), rows[:, 3], rtol=1e-5, atol=1e-6)


def test_large_lambda_zeroes_groups_in_fit():
    x, y = contract.classification_data()
    model = contract.dense_classifier()
    model.compile(GroupLassoProximal(keras.optimizers.SGD(0.1), layers=["hidden"], lmbda=5.0),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(model.get_layer("hidden").kernel.numpy() == 0)


def test_conv_and_dense_groups_of_different_sizes():
    # a Conv2D (groups of 3*3*2 + 1 = 19 entries) and a Dense layer (4 + 1 = 5) grouped together: each layer's
    # groups are thresholded on their own (groups, d) matrix.
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(6, name="dense")(h))
    rng = np.random.default_rng(3)
    before = {v.path: v.numpy().astype(np.float64) for v in model.trainable_variables}
    grads = {v.path: rng.normal(size=v.shape) for v in model.trainable_variables}
    opt = GroupLassoProximal(keras.optimizers.SGD(0.1), layers=["conv", "dense"], lmbda=2.0)
    opt.apply([tf.constant(grads[v.path], "float32") for v in model.trainable_variables], model.trainable_variables)
    for name, width in (("conv", 19), ("dense", 5)):
        kernel = before[f"{name}/kernel"] - 0.1 * grads[f"{name}/kernel"]
        bias = before[f"{name}/bias"] - 0.1 * grads[f"{name}/bias"]
        rows = np.concatenate([kernel.reshape(-1, kernel.shape[-1]).T, bias[:, None]], axis=1)
        assert rows.shape[1] == width
        rows = rows * np.maximum(0, 1 - 0.2 / np.linalg.norm(rows, axis=1, keepdims=True))
        layer = model.get_layer(name)
        got = np.concatenate([layer.kernel.numpy().reshape(-1, rows.shape[0]).T, layer.bias.numpy()[:, None]], 1)
        np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-6)


contract.install(
    contract.ComponentCase(
        name="group_lasso_proximal",
        make=lambda: GroupLassoProximal(keras.optimizers.SGD(0.1), layers=["conv"], lmbda=1e-3),
        model=lambda opt: contract.conv_classifier(),
        data=lambda: contract.classification_data((8, 8, 2)),
        optimizer=contract.COMPONENT,
        distributed=True,
        bad_args=[
            (lambda: GroupLassoProximal(keras.optimizers.SGD(), layers=[]), "layers"),
            (lambda: GroupLassoProximal(keras.optimizers.SGD(), layers=["c"], lmbda=-1.0), "lmbda"),
        ],
    ),
    globals(),
)

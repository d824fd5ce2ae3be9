import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reg.functional import entropic_ot_cost
from keras_reg.functional.representation import off_diagonal_covariance_penalty
from keras_reg.functional.representation import pairwise_squared_distances
from keras_reg.regularizers import DispersiveRegularizer
from keras_reg.losses import MongeGapLoss
from keras_reg.losses import RepresentationPenalty
from keras_reg.testing import contract
from tests.losses._reference import numeric_grad

RNG = np.random.default_rng(4)


def ref_dispersive(z, tau, include_diagonal=True):
    z = z.reshape(len(z), -1).astype(np.float64)
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    e = np.exp(-d2 / (tau * z.shape[1]))
    if include_diagonal:
        return np.log(e.mean())
    mask = ~np.eye(len(z), dtype=bool)
    return np.log(e[mask].mean())


def ref_entropic_ot(cost, eps, iters=5000):
    n, m = cost.shape
    la, lb = np.full(n, -np.log(n)), np.full(m, -np.log(m))
    f, g = np.zeros(n), np.zeros(m)

    def lse(a, axis):
        mx = a.max(axis, keepdims=True)
        return (mx + np.log(np.exp(a - mx).sum(axis, keepdims=True))).squeeze(axis)

    for _ in range(iters):
        f = -eps * lse((g[None] - cost) / eps + lb[None], 1)
        g = -eps * lse((f[:, None] - cost) / eps + la[:, None], 0)
    p = np.exp((f[:, None] + g[None] - cost) / eps + la[:, None] + lb[None])
    return (p * cost).sum() + eps * (p * np.log(p / np.exp(la[:, None] + lb[None]))).sum(), p


def ref_monge_gap(x, y, eps):
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.mean(((x - y) ** 2).sum(-1)) - ref_entropic_ot(cost, eps)[0]


def test_representation_penalty_adds_weighted_loss_and_is_identity():
    z = RNG.normal(size=(6, 4)).astype("float32")
    layer = RepresentationPenalty(DispersiveRegularizer(1.0, temperature=2.0), weight=0.3)
    out = layer(z, training=True)
    np.testing.assert_array_equal(np.asarray(out), z)
    assert float(layer.losses[0]) == pytest.approx(0.3 * ref_dispersive(z, 2.0), rel=1e-5)
    layer(z, training=False)
    assert not layer.losses  # inference adds nothing
    with pytest.raises(ValueError, match="penalty"):
        RepresentationPenalty(3.0)


def test_representation_penalty_in_fit_spreads_representations():
    x, y = contract.classification_data()
    inputs = keras.Input((8,))
    h = keras.layers.Dense(4, name="hidden")(inputs)
    h = RepresentationPenalty(DispersiveRegularizer(), weight=1.0)(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    encoder = keras.Model(inputs, model.get_layer("hidden").output)
    before = ref_dispersive(encoder.predict(x, verbose=0), 1.0)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert ref_dispersive(encoder.predict(x, verbose=0), 1.0) < before


def test_entropic_ot_matches_float64_sinkhorn_and_gradient_is_the_coupling():
    x = RNG.normal(size=(6, 2))
    y = RNG.normal(size=(6, 2)) + 0.5
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    expected, coupling = ref_entropic_ot(cost, 0.5)
    c = tf.Variable(cost.astype("float32"))
    with tf.GradientTape() as tape:
        value = tf.function(lambda cc: entropic_ot_cost(cc, 0.5, num_iters=300))(c)
    assert float(value) == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(tape.gradient(value, c).numpy(), coupling, atol=1e-5)
    np.testing.assert_allclose(pairwise_squared_distances(x.astype("float32"), y.astype("float32")), cost, rtol=1e-5, atol=1e-5)


def test_monge_gap_matches_reference_and_is_small_for_ot_maps():
    x = RNG.normal(size=(8, 2))
    loss = MongeGapLoss(epsilon=0.2, num_iters=3000)
    compiled = tf.function(lambda a, b: loss(a, b))  # the eager while-loop is slow
    # A gradient of a convex function (symmetric PD linear map + shift) is an OT map: gap within the entropic bias.
    a = np.array([[1.0, 0.3], [0.3, 2.0]])
    ot_map = x @ a + 1.0
    gap = float(compiled(x.astype("float32"), ot_map.astype("float32")))
    assert gap == pytest.approx(ref_monge_gap(x, ot_map, 0.2), rel=1e-3, abs=1e-4)
    assert -0.2 * np.log(8) - 1e-4 <= gap < 0.05
    # A permutation of the points is far from optimal.
    shuffled = x[::-1] * 2.0
    bad = float(compiled(x.astype("float32"), shuffled.astype("float32")))
    assert bad == pytest.approx(ref_monge_gap(x, shuffled, 0.2), rel=1e-3)
    assert bad > 1.0
    with pytest.raises(ValueError, match="y_true"):
        loss(x.astype("float32"), np.zeros((8, 3), "float32"))
    with pytest.raises(ValueError, match="sample_weight"):
        loss(x.astype("float32"), ot_map.astype("float32"), sample_weight=np.ones(8))


def _map_data():
    x = np.random.default_rng(0).normal(size=(48, 2)).astype("float32")
    return x, x


def _mapper(loss=None):
    inputs = keras.Input((2,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


contract.install(
    contract.ComponentCase(
        name="monge_gap", make=lambda: MongeGapLoss(epsilon=0.5, num_iters=20), model=_mapper, data=_map_data,
        loss=contract.COMPONENT, save_atol=1e-5,
        bad_args=[(lambda: MongeGapLoss(epsilon=0.0), "epsilon"), (lambda: MongeGapLoss(num_iters=0), "num_iters")],
    ),
    globals(),
)
contract.install(
    contract.ComponentCase(
        name="representation_penalty", make=lambda: RepresentationPenalty(DispersiveRegularizer(), weight=0.5),
        model=lambda layer: contract.dense_classifier(middle=layer), jit=False,
        bad_args=[(lambda: RepresentationPenalty(DispersiveRegularizer(), weight=-1.0), "weight")],
    ),
    globals(),
)


# -- Mixed Barlow Twins, BEER, NMTune -------------------------------------------------------------------------------

from keras_reg.losses import BEERLoss  # noqa: E402
from keras_reg.losses import MixedBarlowTwinsLoss  # noqa: E402
from keras_reg.losses import NMTuneRegularization  # noqa: E402
from tests.functional.test_representation_math import ref_barlow  # noqa: E402
from tests.functional.test_representation_math import ref_beer  # noqa: E402
from tests.functional.test_representation_math import ref_mixed  # noqa: E402


def test_mixed_barlow_twins_loss_values_and_shapes():
    z = RNG.normal(size=(7, 3, 4))
    perm, alpha = RNG.permutation(7), 0.35
    loss = MixedBarlowTwinsLoss(lambda_=0.02, mix_scale=3.0)
    plain = float(loss(np.zeros((7, 2)), z[:, :2].astype("float32")))
    assert plain == pytest.approx(ref_barlow(z[:, 0], z[:, 1], 0.02), rel=1e-5)
    y = np.stack([perm, np.full(7, alpha)], -1).astype("float32")
    mixed = float(loss(y, z.astype("float32")))
    expected = ref_barlow(z[:, 0], z[:, 1], 0.02) + ref_mixed(z[:, 0], z[:, 1], z[:, 2], perm, alpha, 0.02, 3.0)
    assert mixed == pytest.approx(expected, rel=1e-5)
    # Identical, decorrelated, centred, unit-norm views: var = 1 / (N - 1), C = (N - 1) / N * var / (var + eps) * I
    # (unbiased variance and 1/N correlation, as the authors' code), so the loss is D (1 - C_11)^2: D / N^2 at eps = 0.
    q, _ = np.linalg.qr(np.concatenate([np.ones((8, 1)), RNG.normal(size=(8, 3))], 1))
    views = np.stack([q[:, 1:], q[:, 1:]], 1)
    c11 = 7 / 8 * (1 / 7) / (1 / 7 + 1e-5)
    assert float(loss(np.zeros((8, 2)), views.astype("float32"))) == pytest.approx(3 * (1 - c11) ** 2, rel=1e-4)
    no_eps = MixedBarlowTwinsLoss(lambda_=0.02, mix_scale=3.0, epsilon=0.0)
    assert float(no_eps(np.zeros((8, 2)), views.astype("float32"))) == pytest.approx(3 / 64, rel=1e-4)
    dead = z.copy()
    dead[:, :, 3] = 0.0  # a dead ReLU unit in every view: finite, and its on-diagonal term is exactly 1
    got = float(loss(y, dead.astype("float32")))
    assert np.isfinite(got)
    assert got == pytest.approx(ref_barlow(dead[:, 0], dead[:, 1], 0.02) + ref_mixed(
        dead[:, 0], dead[:, 1], dead[:, 2], perm, alpha, 0.02, 3.0), rel=1e-5)
    with pytest.raises(ValueError, match="batch, 2, dim"):
        loss(np.zeros((7, 2)), np.zeros((7, 4, 3), "float32"))
    with pytest.raises(ValueError, match="y_true"):
        loss(np.zeros((7, 3)), z.astype("float32"))
    with pytest.raises(ValueError, match="sample_weight"):
        loss(y, z.astype("float32"), sample_weight=np.ones(7))


def test_beer_loss_matches_reference():
    phi = RNG.normal(size=(6, 4))
    stacked = np.stack([phi, RNG.normal(size=(6, 4)), phi + 0.2 * RNG.normal(size=(6, 4))], 1)
    reward = RNG.normal(scale=2.0, size=6)
    y = np.stack([reward, np.full(6, 1.7)], -1)
    got = float(BEERLoss(discount=0.95, beta=0.5)(y.astype("float32"), stacked.astype("float32")))
    assert got == pytest.approx(0.5 * ref_beer(stacked[:, 0], stacked[:, 1], stacked[:, 2], reward, 1.7, 0.95), rel=1e-5)
    with pytest.raises(ValueError, match="batch, 3, dim"):
        BEERLoss()(y.astype("float32"), stacked[:, :2].astype("float32"))
    with pytest.raises(ValueError, match="reward"):
        BEERLoss()(reward.astype("float32")[:, None], stacked.astype("float32"))


def ref_nmtune(f, z, mse_w, cov_w, svd_w, k, paired):
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    if paired:
        h = len(z) // 2
        mse = np.mean((unit(z[h:]) - unit(f[:h])) ** 2)
    else:
        mse = np.mean((unit(z) - unit(f)) ** 2)
    c = np.cov(z, rowvar=False)
    cov = ((c - np.diag(np.diag(c))) ** 2).sum() / z.shape[1]
    s = np.linalg.svd(z, compute_uv=False)
    s = s / s.sum()
    return mse_w * mse + cov_w * cov - svd_w * np.mean(s[:k])


@pytest.mark.parametrize("paired", [False, True])
def test_nmtune_penalty_matches_authors_terms(paired):
    f, z = RNG.normal(size=(2, 8, 5))
    layer = NMTuneRegularization(0.7, 0.2, 0.3, k=3, paired_views=paired)
    got = float(layer.penalty(f.astype("float32"), z.astype("float32")))
    assert got == pytest.approx(ref_nmtune(f, z, 0.7, 0.2, 0.3, 3, paired), rel=1e-4)
    out = layer([f.astype("float32"), z.astype("float32")], training=True)
    np.testing.assert_array_equal(np.asarray(out), z.astype("float32"))
    assert float(layer.losses[0]) == pytest.approx(got, rel=1e-6)
    layer([f.astype("float32"), z.astype("float32")], training=False)
    assert not layer.losses
    with pytest.raises(ValueError, match="same width"):
        layer.penalty(f.astype("float32"), z[:, :3].astype("float32"))


def test_nmtune_consistency_gradient_does_not_reach_frozen_features():
    f, z = (tf.Variable(a.astype("float32")) for a in RNG.normal(size=(2, 6, 4)))
    with tf.GradientTape() as tape:
        value = NMTuneRegularization(1.0, 0.0, 0.0).penalty(f, z)
    gf, gz = tape.gradient(value, [f, z])
    assert gf is None and gz is not None


def test_nmtune_with_a_statically_unknown_batch():
    # regression: the covariance term reshaped z to (batch, -1), losing the static width, and ops.eye(None) raised.
    f, z = RNG.normal(size=(2, 7, 6))
    spec = tf.TensorSpec((None, 6), tf.float32)
    layer = NMTuneRegularization(0.7, 0.2, 0.3, k=3)
    penalty = tf.function(layer.penalty, input_signature=[spec, spec])
    want = ref_nmtune(f, z, 0.7, 0.2, 0.3, 3, False)
    assert float(penalty(f.astype("float32"), z.astype("float32"))) == pytest.approx(want, rel=1e-4)
    cov_only = tf.function(off_diagonal_covariance_penalty, input_signature=[tf.TensorSpec((None, 3, 2), tf.float32)])
    want = ref_nmtune(f, z, 0.0, 1.0, 0.0, 3, False)  # a (N, 3, 2) batch is flattened to (N, 6)
    assert float(cov_only(z.reshape(7, 3, 2).astype("float32"))) == pytest.approx(want, rel=1e-4)
    keras.utils.set_random_seed(0)
    model = _nmtune_classifier(NMTuneRegularization(1.0, 0.01, 0.01))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = RNG.normal(size=(20, 8)).astype("float32")
    y = RNG.integers(0, 3, size=20)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # batches 8, 8 and a partial 4
    assert np.all(np.isfinite(history.history["loss"]))


def _views_data():
    x = np.random.default_rng(1).normal(size=(48, 2, 6)).astype("float32")
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]  # two noisy views of the same examples
    return x, np.zeros((48, 2), "float32")


def _siamese(_):
    inputs = keras.Input((None, 6))
    encoder = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)], name="encoder")
    return keras.Model(inputs, keras.layers.TimeDistributed(encoder, dtype="float32")(inputs))


def _beer_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 3, 4)).astype("float32")
    y = np.stack([np.full(48, 5.0), np.ones(48)], -1).astype("float32")  # large rewards: the bound is violated
    return x, y


def _beer_model(_):
    inputs = keras.Input((3, 4))
    return keras.Model(inputs, keras.layers.Dense(4, dtype="float32")(inputs))


def _nmtune_classifier(layer):
    inputs = keras.Input((8,))
    f = keras.layers.Dense(8, activation="relu", name="frozen_features")(inputs)
    z = keras.layers.Dense(8, name="mlp")(f)
    z = layer([f, z])
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", dtype="float32")(z))


contract.install(
    contract.ComponentCase(
        name="mixed_barlow_twins_loss", make=lambda: MixedBarlowTwinsLoss(), model=_siamese, data=_views_data,
        loss=contract.COMPONENT, save_atol=1e-5,
        bad_args=[(lambda: MixedBarlowTwinsLoss(lambda_=-1.0), "lambda_"),
                  (lambda: MixedBarlowTwinsLoss(mix_scale=float("nan")), "mix_scale"),
                  (lambda: MixedBarlowTwinsLoss(epsilon=-1e-5), "epsilon")],
    ),
    globals(),
)
contract.install(
    contract.ComponentCase(
        name="beer", make=lambda: BEERLoss(), model=_beer_model, data=_beer_data, loss=contract.COMPONENT,
        optimizer=lambda: keras.optimizers.SGD(1.0), save_atol=1e-5,
        bad_args=[(lambda: BEERLoss(discount=0.0), "discount"), (lambda: BEERLoss(discount=1.5), "discount"),
                  (lambda: BEERLoss(beta=-1.0), "beta")],
    ),
    globals(),
)
contract.install(
    contract.ComponentCase(
        name="nmtune", make=lambda: NMTuneRegularization(1.0, 0.01, 0.01), model=_nmtune_classifier,
        bad_args=[(lambda: NMTuneRegularization(mse_weight=-1.0), "mse_weight"),
                  (lambda: NMTuneRegularization(cov_weight=float("inf")), "cov_weight"),
                  (lambda: NMTuneRegularization(svd_weight=-0.1), "svd_weight"),
                  (lambda: NMTuneRegularization(k=0), "k")],
    ),
    globals(),
)

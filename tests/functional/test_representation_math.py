"""float64 references for the math of the representation regularizers (CS divergences, NPOS outliers, energy
margins, FLOPS, BEER, Barlow Twins, InfoNCE, rotations)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_reg import functional
from keras_reg.functional.self_supervised import correlated_feature_masks
from keras_reg.functional.self_supervised import random_feature_masks
from keras_reg.functional.self_supervised import standardize
from tests.losses._reference import numeric_grad

RNG = np.random.default_rng(11)


def gram(a, b, sigma):
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))


def ref_cs_divergence(a, b, sigma):
    return np.log(gram(a, a, sigma).mean()) + np.log(gram(b, b, sigma).mean()) - 2 * np.log(gram(a, b, sigma).mean())


def ref_conditional_cs(x, y, y_hat, sigma):
    """Eq. 18 with explicit loops over the conditioning points j."""
    k, l1, l2, l21 = gram(x, x, sigma), gram(y, y, sigma), gram(y_hat, y_hat, sigma), gram(y_hat, y, sigma)
    n = len(k)
    t1 = t2 = t3 = 0.0
    for j in range(n):
        denom = sum(k[j, i] for i in range(n)) ** 2
        t1 += sum(k[j, i] * l1[j, i] for i in range(n)) / denom
        t2 += sum(k[j, i] * l2[j, i] for i in range(n)) / denom
        t3 += sum(k[j, i] * l21[j, i] for i in range(n)) / denom
    return np.log(t1) + np.log(t2) - 2 * np.log(t3)


def ref_qmi(x, t, sigma, normalize=False):
    def qmi(k, l):
        n = len(k)
        joint = (k * l).sum() / n**2
        marg = k.sum() * l.sum() / n**4
        cross = sum(k[i, :].sum() * l[i, :].sum() for i in range(n)) / n**3
        return np.log(joint) + np.log(marg) - 2 * np.log(cross)

    kx, kt = gram(x, x, sigma), gram(t, t, sigma)
    value = qmi(kx, kt)
    if normalize:
        value /= np.sqrt(qmi(kx, kx) * qmi(kt, kt))
    return value


def test_cs_divergence_matches_reference_and_gaussian_closed_form():
    a, b = RNG.normal(size=(7, 3)), RNG.normal(size=(5, 3)) + 0.4
    got = float(functional.cs_divergence(a.astype("float32"), b.astype("float32"), 1.3))
    assert got == pytest.approx(ref_cs_divergence(a, b, 1.3), rel=1e-4)
    assert float(functional.cs_divergence(a.astype("float32"), a.astype("float32"))) == pytest.approx(0.0, abs=1e-5)
    # Large samples of two 1-D Gaussians: E[kappa] in closed form for N(m1, s1^2), N(m2, s2^2) and kernel width sigma.
    m1, s1, m2, s2, sigma = 0.0, 1.0, 1.5, 0.5, 1.0
    from scipy.stats import norm

    quantiles = norm.ppf((np.arange(2000) + 0.5) / 2000)[:, None]  # evenly spread "samples": no sampling noise
    p, q = m1 + s1 * quantiles, m2 + s2 * quantiles
    expected = (
        np.log(sigma / np.sqrt(sigma**2 + 2 * s1**2))
        + np.log(sigma / np.sqrt(sigma**2 + 2 * s2**2))
        - 2 * np.log(sigma / np.sqrt(sigma**2 + s1**2 + s2**2))
        + (m1 - m2) ** 2 / (sigma**2 + s1**2 + s2**2)
    )
    got = float(functional.cs_divergence(p.astype("float32"), q.astype("float32"), sigma))
    assert got == pytest.approx(expected, abs=1e-3)


def test_conditional_cs_divergence_matches_eq18_and_vanishes_for_exact_predictions():
    x, y = RNG.normal(size=(6, 2)), RNG.normal(size=(6,))
    y_hat = y + RNG.normal(scale=0.5, size=(6,))
    got = float(functional.conditional_cs_divergence(x.astype("float32"), y.astype("float32"), y_hat.astype("float32"), 0.8))
    assert got == pytest.approx(ref_conditional_cs(x, y[:, None], y_hat[:, None], 0.8), rel=1e-4)
    same = float(functional.conditional_cs_divergence(x.astype("float32"), y.astype("float32"), y.astype("float32")))
    assert same == pytest.approx(0.0, abs=1e-5)
    assert got > 0.0


def test_conditional_cs_divergence_gradient():
    x, y = RNG.normal(size=(5, 2)), RNG.normal(size=(5, 1))
    y_hat = y + RNG.normal(scale=0.7, size=(5, 1))
    v = tf.Variable(y_hat.astype("float32"))
    with tf.GradientTape() as tape:
        value = functional.conditional_cs_divergence(x.astype("float32"), y.astype("float32"), v)
    expected = numeric_grad(lambda yh: ref_conditional_cs(x, y, yh, 1.0), y_hat)
    np.testing.assert_allclose(tape.gradient(value, v).numpy(), expected, rtol=2e-3, atol=1e-4)


def test_cs_mutual_information_reference_and_properties():
    x = RNG.normal(size=(8, 3))
    t = np.tanh(x @ RNG.normal(size=(3, 2))) + 0.1 * RNG.normal(size=(8, 2))
    for normalize in (False, True):
        got = float(functional.cs_quadratic_mutual_information(x.astype("float32"), t.astype("float32"), 1.0, normalize))
        assert got == pytest.approx(ref_qmi(x, t, 1.0, normalize), rel=1e-4, abs=1e-6)
    assert float(functional.cs_quadratic_mutual_information(x.astype("float32"), x.astype("float32"), 1.0, True)) == (
        pytest.approx(1.0, abs=1e-5)
    )
    # Independent samples carry (almost) no information; a function of x carries more.
    rng = np.random.default_rng(3)
    big_x, noise = rng.normal(size=(400, 1)), rng.normal(size=(400, 1))
    independent = float(functional.cs_quadratic_mutual_information(big_x.astype("float32"), noise.astype("float32")))
    dependent = float(functional.cs_quadratic_mutual_information(big_x.astype("float32"), (2 * big_x).astype("float32")))
    assert abs(independent) < 0.01 < dependent


def ref_virtual_outliers(features, noise, k, num_boundary, num_outliers, sigma):
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    radius = np.sort(d2, axis=1)[:, k - 1]
    boundary = z[np.argsort(-radius, kind="stable")[:num_boundary]]
    candidates = (boundary[:, None, :] + sigma * noise).reshape(-1, z.shape[1])
    c2 = ((candidates[:, None] - z[None]) ** 2).sum(-1)
    outlier_radius = np.sort(c2, axis=1)[:, k - 1]
    return candidates[np.argsort(-outlier_radius, kind="stable")[:num_outliers]]


def test_virtual_outliers_follow_npos():
    features = RNG.normal(size=(20, 3)) + np.array([2.0, 0.0, 0.0])
    noise = RNG.normal(size=(4, 6, 3))
    got = functional.virtual_outliers(features.astype("float32"), noise.astype("float32"), 3, 4, 5, 0.5).numpy()
    expected = ref_virtual_outliers(features, noise, 3, 4, 5, 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The outliers lie farther from the data than the data's own k-th neighbours.
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    data_radius = np.sort(((z[:, None] - z[None]) ** 2).sum(-1), axis=1)[:, 2]
    outlier_radius = np.sort(((got[:, None] - z[None]) ** 2).sum(-1), axis=1)[:, 2]
    assert outlier_radius.min() > np.median(data_radius)


def ref_huber(x):
    return np.where(np.abs(x) <= 1, 0.5 * x**2, np.abs(x) - 0.5)


def ref_energy_loss(id_logits, ood_logits, t_in, t_out, use_huber=True):
    def energy(z):
        m = z.max(-1)
        return -(m + np.log(np.exp(z - m[:, None]).sum(-1)))

    pen = ref_huber if use_huber else np.square
    return pen(np.maximum(energy(id_logits) - t_in, 0)).mean() + pen(np.maximum(t_out - energy(ood_logits), 0)).mean()


@pytest.mark.parametrize("use_huber", [True, False])
def test_virtual_outlier_energy_loss(use_huber):
    id_logits, ood_logits = RNG.normal(scale=3, size=(6, 4)), RNG.normal(scale=3, size=(5, 4))
    got = float(functional.virtual_outlier_energy_loss(id_logits.astype("float32"), ood_logits.astype("float32"),
                                                       -2.0, 1.0, use_huber))
    assert got == pytest.approx(ref_energy_loss(id_logits, ood_logits, -2.0, 1.0, use_huber), rel=1e-5)
    # Confident data (energy below t_in) and flat outliers (energy above t_out) cost nothing.
    assert float(functional.virtual_outlier_energy_loss(np.full((2, 3), 20.0, "float32"),
                                                        np.full((2, 3), -20.0, "float32"), -15.0, -3.0)) == 0.0


def test_flops_value_weights_and_gradient():
    a = RNG.normal(size=(6, 5))
    w = RNG.uniform(0.5, 2.0, size=5)
    assert float(functional.flops(a.astype("float32"))) == pytest.approx((np.abs(a).mean(0) ** 2).sum(), rel=1e-5)
    assert float(functional.flops(a.astype("float32"), w)) == pytest.approx((w * np.abs(a).mean(0) ** 2).sum(), rel=1e-5)
    v = tf.Variable(a.astype("float32"))
    with tf.GradientTape() as tape:
        value = functional.flops(v)
    # d/da_ij = 2 mean_i|a_j| sign(a_ij) / N
    np.testing.assert_allclose(tape.gradient(value, v).numpy(), 2 * np.abs(a).mean(0) * np.sign(a) / 6, rtol=1e-5)


def ref_beer(phi, phi_next, phi_target, reward, w2, gamma):
    n, nt = np.linalg.norm(phi, axis=1), np.linalg.norm(phi_target, axis=1)
    ub = 0.5 / gamma * (n**2 + gamma**2 * np.linalg.norm(phi_next, axis=1) ** 2 - reward**2 / w2) / (n * nt)
    cos = (phi * phi_target).sum(1) / (n * nt)
    return np.maximum(cos - ub, 0).mean()


def test_beer_penalty_matches_authors_formula_and_bound_is_constant():
    phi, phi_next, phi_target = RNG.normal(size=(3, 6, 4))
    phi_target = phi + 0.1 * phi_target  # similar consecutive representations: the bound is active
    reward = RNG.normal(scale=3.0, size=6)
    got = functional.beer_penalty(phi.astype("float32"), phi_next.astype("float32"), phi_target.astype("float32"),
                                  reward.astype("float32"), 2.5, 0.9)
    expected = ref_beer(phi, phi_next, phi_target, reward, 2.5, 0.9)
    assert expected > 0 and float(got) == pytest.approx(expected, rel=1e-5)
    p, pt = tf.Variable(phi.astype("float32")), tf.Variable(phi_target.astype("float32"))
    with tf.GradientTape() as tape:
        value = functional.beer_penalty(p, phi_next.astype("float32"), pt, reward.astype("float32"), 2.5, 0.9)
    gp, gpt = tape.gradient(value, [p, pt])
    n, nt = np.linalg.norm(phi, axis=1), np.linalg.norm(phi_target, axis=1)
    ub = 0.5 / 0.9 * (n**2 + 0.81 * np.linalg.norm(phi_next, axis=1) ** 2 - reward**2 / 2.5) / (n * nt)

    def with_fixed_bound(ph, pht):
        cos = (ph * pht).sum(1) / (np.linalg.norm(ph, axis=1) * np.linalg.norm(pht, axis=1))
        return np.maximum(cos - ub, 0).mean()

    np.testing.assert_allclose(gp.numpy(), numeric_grad(lambda v: with_fixed_bound(v, phi_target), phi), atol=1e-5)
    np.testing.assert_allclose(gpt.numpy(), numeric_grad(lambda v: with_fixed_bound(phi, v), phi_target), atol=1e-5)


def ref_standardize(z, eps=1e-5):
    return (z - z.mean(0)) / np.sqrt(z.var(0, ddof=1) + eps)


def ref_barlow(z_a, z_b, lam, eps=1e-5):
    c = ref_standardize(z_a, eps).T @ ref_standardize(z_b, eps) / len(z_a)
    off = c - np.diag(np.diag(c))
    return ((np.diag(c) - 1) ** 2).sum() + lam * (off**2).sum()


def ref_mixed(z_a, z_b, z_m, perm, alpha, lam, scale, eps=1e-5):
    a, b, m = ref_standardize(z_a, eps), ref_standardize(z_b, eps), ref_standardize(z_m, eps)
    n = len(a)
    cc1 = m.T @ a / n - (alpha * a.T @ a / n + (1 - alpha) * b[perm].T @ a / n)
    cc2 = m.T @ b / n - (alpha * a.T @ b / n + (1 - alpha) * b[perm].T @ b / n)
    return scale * lam * ((cc1**2).sum() + (cc2**2).sum())


def test_barlow_twins_and_mixed_term_match_reference_with_gradients():
    z_a, z_b, z_m = RNG.normal(size=(3, 7, 4))
    perm, alpha = RNG.permutation(7), 0.3
    assert float(functional.barlow_twins_loss(z_a.astype("float32"), z_b.astype("float32"), 0.01)) == pytest.approx(
        ref_barlow(z_a, z_b, 0.01), rel=1e-5
    )
    got = float(functional.mixed_barlow_twins_regularizer(z_a.astype("float32"), z_b.astype("float32"),
                                                          z_m.astype("float32"), perm, alpha, 0.01, 4.0))
    assert got == pytest.approx(ref_mixed(z_a, z_b, z_m, perm, alpha, 0.01, 4.0), rel=1e-5)
    va, vm = tf.Variable(z_a.astype("float32")), tf.Variable(z_m.astype("float32"))
    with tf.GradientTape() as tape:
        value = functional.barlow_twins_loss(va, z_b.astype("float32"), 0.01) + functional.mixed_barlow_twins_regularizer(
            va, z_b.astype("float32"), vm, perm, alpha, 0.01, 4.0)
    ga, gm = tape.gradient(value, [va, vm])

    def total(za, zm):
        return ref_barlow(za, z_b, 0.01) + ref_mixed(za, z_b, zm, perm, alpha, 0.01, 4.0)

    np.testing.assert_allclose(ga.numpy(), numeric_grad(lambda v: total(v, z_m), z_a), rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(gm.numpy(), numeric_grad(lambda v: total(z_a, v), z_m), rtol=2e-3, atol=2e-5)
    # A mixed view that is exactly the (standardised) interpolation of linear features satisfies the assumption.
    linear_a, linear_b = RNG.normal(size=(2, 9, 3))
    mixed = alpha * linear_a + (1 - alpha) * linear_b[np.arange(9)]
    assert ref_mixed(linear_a, linear_b, mixed, np.arange(9), alpha, 1.0, 1.0) < ref_mixed(
        linear_a, linear_b, RNG.normal(size=(9, 3)), np.arange(9), alpha, 1.0, 1.0)


def test_barlow_twins_is_finite_with_a_constant_feature():
    # regression: with no epsilon a constant feature (a dead ReLU) standardised to 0/0 and the loss was NaN.
    z_a, z_b, z_m = RNG.normal(size=(3, 6, 4))
    z_a[:, 1] = 0.0
    z_b[:, 1] = 0.0
    z_m[:, 2] = 3.0
    perm, alpha = RNG.permutation(6), 0.4
    standardized = np.asarray(standardize(z_a.astype("float32")))
    assert np.all(np.isfinite(standardized)) and np.all(standardized[:, 1] == 0.0)
    va = tf.Variable(z_a.astype("float32"))
    with tf.GradientTape() as tape:
        bt = functional.barlow_twins_loss(va, z_b.astype("float32"), 0.01)
        mixed = functional.mixed_barlow_twins_regularizer(va, z_b.astype("float32"), z_m.astype("float32"), perm,
                                                          alpha, 0.01, 4.0)
        total = bt + mixed
    assert float(bt) == pytest.approx(ref_barlow(z_a, z_b, 0.01), rel=1e-5)
    assert float(mixed) == pytest.approx(ref_mixed(z_a, z_b, z_m, perm, alpha, 0.01, 4.0), rel=1e-5)
    assert np.all(np.isfinite(tape.gradient(total, va).numpy()))
    # the dead feature contributes its full on-diagonal (1 - 0)^2 = 1 to L_BT
    assert float(bt) == pytest.approx(1.0 + ref_barlow(np.delete(z_a, 1, 1), np.delete(z_b, 1, 1), 0.01), rel=1e-5)


def test_info_nce_matches_reference():
    z, zp = RNG.normal(size=(2, 6, 4))

    def ref(a, b, tau):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        logits = a @ b.T / tau
        m = logits.max(1, keepdims=True)
        log_softmax = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
        return -np.mean(np.diag(log_softmax))

    assert float(functional.info_nce(z.astype("float32"), zp.astype("float32"), 0.2)) == pytest.approx(
        ref(z, zp, 0.2), rel=1e-5)


def test_feature_masks_are_complementary():
    first, second = random_feature_masks(5, 6, 1)
    first, second = first.numpy(), second.numpy()
    np.testing.assert_array_equal(first + second, 1.0)
    np.testing.assert_array_equal(first.sum(1), 3.0)
    assert len({tuple(r) for r in first}) > 1  # masks differ across examples
    # Correlated masking keeps the seed group and its most correlated groups together.
    corr = np.array([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.8], [0.0, 0.1, 0.8, 1.0]])
    first, second = correlated_feature_masks(50, corr, 2)
    rows = {tuple(r) for r in first.numpy()}
    assert rows <= {(1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0)} and len(rows) == 2
    np.testing.assert_array_equal(first.numpy() + second.numpy(), 1.0)


def test_rotate_images_matches_numpy_rot90():
    images = RNG.normal(size=(4, 5, 5, 2)).astype("float32")
    turns = np.array([0, 1, 2, 3])
    got = functional.rotate_images(images, turns).numpy()
    for i, k in enumerate(turns):
        np.testing.assert_array_equal(got[i], np.rot90(images[i], k, axes=(0, 1)))

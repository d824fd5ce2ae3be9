"""Pure math of the self-supervised regularizers: Barlow Twins and its mixed-sample term, InfoNCE on feature-masked
views, rotation pretext labels.

Barlow Twins (Zbontar et al. 2021), z_a, z_b (N, D) standardised per feature over the batch,
z_hat = (z - mean) / sqrt(var + eps) with the unbiased variance (N - 1) and eps = 1e-5 (the epsilon of the
BatchNorm1d(affine=False) of the Barlow Twins code; without it a constant feature, e.g. a dead ReLU, gives 0/0):

    C = z_a^T z_b / N,      L_BT = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2

Mixed-sample term ("Guarding Barlow Twins Against Overfitting with Mixed Samples", Bandara et al. 2023), for
x_m = alpha x_a + (1 - alpha) x_b[pi] and its standardised embedding z_m:

    R = lambda * s * ( ||C(z_m, z_a) - (alpha C(z_a, z_a) + (1 - alpha) C(z_b[pi], z_a))||_F^2
                     + ||C(z_m, z_b) - (alpha C(z_a, z_b) + (1 - alpha) C(z_b[pi], z_b))||_F^2 )

with C(u, v) = u^T v / N (s: the "mixup_loss_scale" of the authors' code).
"""

import keras
from keras import ops


def standardize(z, epsilon=1e-5):
    """(z - mean) / sqrt(var + epsilon) per feature over the batch, var with the N - 1 denominator (torch's default).

    epsilon keeps a constant feature finite (it standardises to 0), as the epsilon of BatchNorm1d does."""
    z = ops.cast(z, "float32")
    n = ops.cast(ops.shape(z)[0], "float32")
    centred = z - ops.mean(z, axis=0, keepdims=True)
    variance = ops.sum(ops.square(centred), axis=0, keepdims=True) / (n - 1.0)
    return centred / ops.sqrt(variance + epsilon)


def cross_correlation(u, v):
    """u^T v / N for standardised (N, D) embeddings."""
    n = ops.cast(ops.shape(u)[0], "float32")
    return ops.matmul(ops.transpose(u), v) / n


def barlow_twins_loss(z_a, z_b, lambda_=0.0051, epsilon=1e-5):
    """sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with C the cross-correlation of the standardised views."""
    c = cross_correlation(standardize(z_a, epsilon), standardize(z_b, epsilon))
    eye = ops.eye(c.shape[-1], dtype="float32")
    on = ops.sum(ops.square(ops.diagonal(c) - 1.0))
    off = ops.sum(ops.square(c * (1.0 - eye)))
    return on + lambda_ * off


def mixed_barlow_twins_regularizer(z_a, z_b, z_m, permutation, alpha, lambda_=0.0051, scale=4.0, epsilon=1e-5):
    """The mixed-sample cross-correlation term R above (the targets are not stop-gradient, as in the authors' code)."""
    za, zb, zm = (standardize(z, epsilon) for z in (z_a, z_b, z_m))
    zb_perm = ops.take(zb, permutation, axis=0)
    alpha = ops.cast(alpha, "float32")
    first = cross_correlation(zm, za) - (alpha * cross_correlation(za, za) + (1.0 - alpha) * cross_correlation(zb_perm, za))
    second = cross_correlation(zm, zb) - (alpha * cross_correlation(za, zb) + (1.0 - alpha) * cross_correlation(zb_perm, zb))
    return scale * lambda_ * (ops.sum(ops.square(first)) + ops.sum(ops.square(second)))


def info_nce(z, z_prime, temperature=0.1):
    """-(1/N) sum_i log softmax_j(cos(z_i, z'_j) / tau)_i: the batch-softmax contrastive loss on two views."""
    z = ops.cast(z, "float32")
    z_prime = ops.cast(z_prime, "float32")
    z = z * ops.rsqrt(ops.maximum(ops.sum(ops.square(z), axis=-1, keepdims=True), 1e-24))
    z_prime = z_prime * ops.rsqrt(ops.maximum(ops.sum(ops.square(z_prime), axis=-1, keepdims=True), 1e-24))
    logits = ops.matmul(z, ops.transpose(z_prime)) / temperature
    return -ops.mean(ops.diagonal(ops.log_softmax(logits, axis=-1)))


def random_feature_masks(batch_size, num_groups, seed):
    """Complementary (B, G) 0/1 masks: each example's feature groups split at random into two halves (RFM).

    The first mask keeps floor(G / 2) groups chosen uniformly at random per example; the second keeps the rest.
    """
    scores = keras.random.uniform((batch_size, num_groups), seed=seed)
    ranks = ops.argsort(ops.argsort(scores, axis=-1), axis=-1)
    first = ops.cast(ranks < num_groups // 2, "float32")
    return first, 1.0 - first


def correlated_feature_masks(batch_size, correlation, seed):
    """Complementary (B, G) masks of correlated feature masking (CFM): per example a seed group is drawn uniformly,
    the first mask keeps the floor(G / 2) groups most correlated with it (the seed included, via `correlation`'s
    diagonal, which should be its maximum), the second keeps the rest."""
    correlation = ops.convert_to_tensor(correlation, "float32")
    num_groups = correlation.shape[-1]
    seeds = keras.random.randint((batch_size,), 0, num_groups, seed=seed)
    rows = ops.take(correlation, seeds, axis=0)
    ranks = ops.argsort(ops.argsort(-rows, axis=-1), axis=-1)
    first = ops.cast(ranks < num_groups // 2, "float32")
    return first, 1.0 - first


def rotate_images(images, quarter_turns):
    """Rotates each (H, W, C) image of a square batch by quarter_turns[i] * 90 degrees counter-clockwise."""
    images = ops.convert_to_tensor(images)
    rotations = [images]
    for _ in range(3):
        rotations.append(ops.flip(ops.transpose(rotations[-1], (0, 2, 1, 3)), axis=1))
    stacked = ops.stack(rotations, axis=1)  # (B, 4, H, W, C)
    one_hot = ops.cast(ops.one_hot(quarter_turns, 4), images.dtype)
    return ops.einsum("bk,bkhwc->bhwc", one_hot, stacked)

"""Pure math of the representation regularizers: the Monge gap (entropic OT by Sinkhorn).

Dispersive loss (InfoNCE-L2 form of Wang & He 2025, used in "DM1: MeanFlow with Dispersive Regularization for 1-Step
Robotic Manipulation", 2025), for a batch of representations z_1..z_B flattened to D features:

    L_disp = log( (1 / B^2) * sum_{i,j} exp(-||z_i - z_j||^2 / (tau * D)) )

Monge gap (Uscidda & Cuturi, "The Monge Gap: A Regularizer to Learn All Transport Maps", ICML 2023), for reference
points x_i and their images y_i = T(x_i):

    M(T) = (1/n) sum_i c(x_i, y_i) - W_{c,eps}(1/n sum_i delta_{x_i}, 1/n sum_i delta_{y_i}),
    W_{c,eps}(a, b) = min_P <P, C> + eps * KL(P || a b^T),   c(x, y) = ||x - y||^2.
"""

import math

from keras import ops


def pairwise_squared_distances(a, b):
    """||a_i - b_j||^2 for (n, d) and (m, d) matrices, clipped at 0."""
    a2 = ops.sum(ops.square(a), axis=-1)[:, None]
    b2 = ops.sum(ops.square(b), axis=-1)[None, :]
    return ops.maximum(a2 + b2 - 2.0 * ops.matmul(a, ops.transpose(b)), 0.0)


def sinkhorn_log(cost, epsilon, num_iters):
    """Log-domain Sinkhorn with uniform marginals; returns the potentials (f, g) after `num_iters` iterations."""
    n = ops.shape(cost)[0]
    m = ops.shape(cost)[1]
    log_a = -ops.log(ops.cast(n, cost.dtype)) * ops.ones((n,), cost.dtype)
    log_b = -ops.log(ops.cast(m, cost.dtype)) * ops.ones((m,), cost.dtype)

    def body(_, fg):
        f, g = fg
        f = -epsilon * ops.logsumexp((g[None, :] - cost) / epsilon + log_b[None, :], axis=1)
        g = -epsilon * ops.logsumexp((f[:, None] - cost) / epsilon + log_a[:, None], axis=0)
        return f, g

    f0 = ops.zeros((n,), cost.dtype)
    g0 = ops.zeros((m,), cost.dtype)
    return ops.fori_loop(0, num_iters, body, (f0, g0))


def entropic_ot_cost(cost, epsilon, num_iters=100):
    """W_eps = <P, C> + eps KL(P || a b^T) at the Sinkhorn coupling P (uniform a, b).

    P is held constant, so the gradient with respect to the cost is P itself (the envelope theorem: exact at
    convergence), without differentiating through the iterations.
    """
    cost_const = ops.stop_gradient(cost)
    f, g = sinkhorn_log(cost_const, epsilon, num_iters)
    n = ops.cast(ops.shape(cost)[0], cost.dtype)
    m = ops.cast(ops.shape(cost)[1], cost.dtype)
    log_p = (f[:, None] + g[None, :] - cost_const) / epsilon - ops.log(n) - ops.log(m)
    coupling = ops.stop_gradient(ops.exp(log_p))
    kl = ops.sum(coupling * (log_p + ops.log(n) + ops.log(m)))
    return ops.sum(coupling * cost) + epsilon * ops.stop_gradient(kl)


def monge_gap(source, mapped, epsilon=0.1, num_iters=100):
    """(1/n) sum_i ||x_i - T(x_i)||^2 - W_{eps}(x, T(x)) with the squared-Euclidean cost."""
    n = ops.shape(source)[0]
    source = ops.reshape(source, (n, -1))
    mapped = ops.reshape(mapped, (n, -1))
    displacement = ops.mean(ops.sum(ops.square(source - mapped), axis=-1))
    return displacement - entropic_ot_cost(pairwise_squared_distances(source, mapped), epsilon, num_iters)


# -- FLOPS sparsity (activity) ------------------------------------------------------------------------------------


def flops(activations, weights=None):
    """sum_j w_j (mean_i |a_ij|)^2 over the features j of a batch a (N, ..., D) flattened to (N', D); w_j = 1 if None.

    The FLOPS regularizer of Paria et al. (2020) as used by SPLADE-style sparse retrievers: the squared mean absolute
    activation of each feature over the batch, summed over features. Leading axes other than the last are pooled
    into the batch.
    """
    a = ops.abs(ops.cast(activations, "float32"))
    a = ops.reshape(a, (-1, a.shape[-1]))
    per_feature = ops.square(ops.mean(a, axis=0))
    if weights is not None:
        per_feature = per_feature * ops.cast(weights, "float32")
    return ops.sum(per_feature)


# -- Virtual outliers (OVOR / NPOS sampler) and the energy-margin term -----------------------------------------------


def _l2_normalize(x, axis=-1):
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-24))


def kth_neighbour_distances(queries, points, k):
    """Squared Euclidean distance from each query to its k-th nearest point (k = 1 is the nearest)."""
    d2 = pairwise_squared_distances(queries, points)
    smallest = -ops.top_k(-d2, k, sorted=True)[0]
    return smallest[:, k - 1]


def virtual_outliers(features, noise, k, num_boundary, num_outliers, sigma=1.0, normalize=True):
    """Non-parametric outlier synthesis (NPOS) in feature space, the sampler OVOR adopts.

    1. (normalize) z_i = f_i / ||f_i||; r_i = squared distance from z_i to its k-th nearest neighbour in {z}
       (z_i itself counts as the first, as in a k-NN index search over the same set);
    2. the `num_boundary` points with the largest r_i are the boundary points b_1..b_S;
    3. candidates c = b_s + sigma * e for the standard-normal draws e in `noise` (shape (S, M, D): M per point);
    4. the `num_outliers` candidates farthest (k-th neighbour distance) from the ID set are the virtual outliers.

    `noise` is passed in so that the function is deterministic and testable; draw it with
    `keras.random.normal((num_boundary, M, D))`. Returns (num_outliers, D), in the normalized space when
    `normalize` (the space in which the distances are measured).
    """
    z = _flatten_batch(ops.cast(features, "float32"))
    if normalize:
        z = _l2_normalize(z)
    radius = kth_neighbour_distances(z, z, k)
    boundary = ops.take(z, ops.top_k(radius, num_boundary, sorted=True)[1], axis=0)
    noise = ops.cast(noise, "float32")
    candidates = ops.reshape(boundary[:, None, :] + sigma * noise, (-1, z.shape[-1]))
    outlier_radius = kth_neighbour_distances(candidates, z, k)
    return ops.take(candidates, ops.top_k(outlier_radius, num_outliers, sorted=True)[1], axis=0)


def energy(logits):
    """The free energy E(x) = -logsumexp_k f_k(x) of a classifier's logits."""
    return -ops.logsumexp(ops.cast(logits, "float32"), axis=-1)


def huber(x, delta=1.0):
    ax = ops.abs(x)
    return ops.where(ax <= delta, 0.5 * ops.square(x), delta * (ax - 0.5 * delta))


def virtual_outlier_energy_loss(id_logits, ood_logits, threshold_in=-15.0, threshold_out=-3.0, use_huber=True):
    """mean H(relu(E(x_in) - t_in)) + mean H(relu(t_out - E(v))): low energy on data, high energy on outliers.

    H is the Huber loss with delta 1 (`use_huber`, OVOR's default) or the square (its MSE option).
    """
    penalty = huber if use_huber else ops.square
    id_gap = ops.relu(energy(id_logits) - threshold_in)
    ood_gap = ops.relu(threshold_out - energy(ood_logits))
    return ops.mean(penalty(id_gap)) + ops.mean(penalty(ood_gap))


# -- BEER: the Bellman-equation bound on the similarity of consecutive representations ---------------------------


def beer_penalty(phi, phi_next, phi_target, reward, head_norm_squared, discount=0.99, eps=1e-6):
    """mean_i relu(cos(phi_i, phi_target_i) - ub_i), the bound ub held constant (no gradient):

        ub_i = (||phi_i||^2 + gamma^2 ||phi_next_i||^2 - r_i^2 / ||w||^2) / (2 gamma ||phi_i|| ||phi_target_i||)

    phi: features of the current (s, a) from the value network; phi_next: its features of (s', pi(s')); phi_target:
    the target network's features of (s', a'); w: the weights of the value network's last (linear) layer.
    """
    phi = ops.cast(phi, "float32")
    phi_next = ops.stop_gradient(ops.cast(phi_next, "float32"))
    phi_target = ops.cast(phi_target, "float32")
    reward = ops.reshape(ops.cast(reward, "float32"), (-1,))
    norm = ops.sqrt(ops.sum(ops.square(phi), axis=-1))
    norm_target = ops.sqrt(ops.sum(ops.square(phi_target), axis=-1))
    bound = (
        ops.square(norm) + discount**2 * ops.sum(ops.square(phi_next), axis=-1) - ops.square(reward) / head_norm_squared
    ) / (2.0 * discount * norm * norm_target)
    cosine = ops.sum(phi * phi_target, axis=-1) / (ops.maximum(norm, eps) * ops.maximum(norm_target, eps))
    return ops.mean(ops.relu(cosine - ops.stop_gradient(bound)))


# -- Feature-space regularizers of NMTune and BA-LoRA -------------------------------------------------------------


def _flatten_batch(z):
    """z (N, ...) as (N, D), D the product of the non-batch dims: static whenever they are, even when N is unknown
    (a partial last batch, a `tf.function` with batch None), so that D can size `eye` and divide."""
    rest = tuple(z.shape[1:])
    if all(d is not None for d in rest):
        return ops.reshape(z, (-1, math.prod(rest)))
    return ops.reshape(z, (ops.shape(z)[0], -1))


def off_diagonal_covariance_penalty(z):
    """sum_{i != j} C_ij^2 / D with C the (N - 1)-normalised covariance of z (N, D)."""
    z = _flatten_batch(ops.cast(z, "float32"))
    n = ops.cast(ops.shape(z)[0], "float32")
    width = z.shape[-1] if z.shape[-1] is not None else ops.shape(z)[-1]
    centred = z - ops.mean(z, axis=0, keepdims=True)
    cov = ops.matmul(ops.transpose(centred), centred) / (n - 1.0)
    off = cov * (1.0 - ops.eye(width, dtype="float32"))
    return ops.sum(ops.square(off)) / ops.cast(width, "float32")


def singular_values(z):
    """The singular values of a (N, D) matrix, in decreasing order."""
    return ops.svd(_flatten_batch(ops.cast(z, "float32")), compute_uv=False)


def top_singular_value_share(z, k):
    """sum_{i <= k} s_i / sum_i s_i: the share of the k largest singular values of z (N, D)."""
    s = singular_values(z)
    return ops.sum(s[:k]) / ops.sum(s)

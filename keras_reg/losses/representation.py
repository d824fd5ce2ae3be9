"""Penalties on representations: `add_loss` pass-through layers, the Monge gap, Barlow Twins with mixed samples,
BEER's representation-similarity bound and NMTune's feature regularizers."""

import keras
from keras import ops

from keras_reg.catalogue import technique
from keras_reg.functional.representation import beer_penalty
from keras_reg.functional.representation import monge_gap
from keras_reg.functional.representation import off_diagonal_covariance_penalty
from keras_reg.functional.representation import singular_values
from keras_reg.functional.self_supervised import barlow_twins_loss
from keras_reg.functional.self_supervised import mixed_barlow_twins_regularizer
from keras_reg.utils.validation import check_non_negative
from keras_reg.utils.validation import check_positive
from keras_reg.utils.validation import check_positive_int

_DM1_PAPER = "DM1: MeanFlow with Dispersive Regularization for 1-Step Robotic Manipulation"
_MONGE_PAPER = "The Monge Gap: A Regularizer to Learn All Transport Maps"
_MIXED_BT_PAPER = "Guarding Barlow Twins Against Overfitting with Mixed Samples"
_BEER_PAPER = "Adaptive Regularization of Representation Rank as an Implicit Constraint of Bellman Equation"
_NMTUNE_PAPER = "Understanding and Mitigating the Label Noise in Pre-training on Downstream Tasks"


@technique("Representation penalty", paper="", year=None, kind="layer")
class RepresentationPenalty(keras.layers.Layer):
    """Adds `weight * penalty(x)` to the model's losses and returns `x` unchanged.

    The way to put a representation regularizer on an inner layer of a functional model: insert it after the layer.
    `penalty` is any serializable callable of a tensor returning a scalar (e.g. `DispersiveRegularizer`, or any
    `keras.regularizers.Regularizer`); it sees the representation in float32. It is the identity at inference and
    contributes nothing to an exported model's outputs.

    Args:
        penalty: callable tensor -> scalar (serializable with Keras to be saved with the model).
        weight: multiplier, >= 0.
        training_only: add the loss only when `training=True` (default).

    Example:
        >>> h = keras.layers.Dense(64, activation="relu")(inputs)
        >>> h = keras_reg.losses.RepresentationPenalty(keras_reg.losses.DispersiveRegularizer(), weight=0.5)(h)
        >>> outputs = keras.layers.Dense(10, activation="softmax")(h)
    """

    def __init__(self, penalty, weight=1.0, training_only=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(penalty, dict):
            penalty = keras.saving.deserialize_keras_object(penalty)
        if not callable(penalty):
            raise ValueError(f"`penalty` must be a callable tensor -> scalar. Received: penalty={penalty!r}")
        self.penalty = penalty
        self.weight = check_non_negative(weight, "weight")
        self.training_only = bool(training_only)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if training or not self.training_only:
            cast = ops.cast(inputs, "float32")
            # Activity regularizers such as DispersiveRegularizer expose the unscaled value as `penalty()`.
            value = self.penalty.penalty(cast) if hasattr(self.penalty, "penalty") else self.penalty(cast)
            self.add_loss(self.weight * ops.cast(value, "float32"))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "penalty": keras.saving.serialize_keras_object(self.penalty),
            "weight": self.weight,
            "training_only": self.training_only,
        }


@technique("Monge gap", paper=_MONGE_PAPER, year=2023, kind="loss")
class MongeGapLoss(keras.losses.Loss):
    """The Monge gap of a learned map T: how far T is from an optimal transport map for the squared-Euclidean cost.

        M(T) = (1/n) sum_i ||x_i - T(x_i)||^2 - W_eps(1/n sum_i delta_{x_i}, 1/n sum_i delta_{T(x_i)})
        W_eps(a, b) = min_P <P, C> + eps * KL(P || a b^T)      (entropic OT, log-domain Sinkhorn)

    Uscidda and Cuturi, "The Monge Gap: A Regularizer to Learn All Transport Maps" (ICML 2023). `y_true` are the
    reference points x (the map's inputs) and `y_pred` their images T(x); the value is a batch-level quantity, so
    per-sample reductions and sample weights do not apply (it is the same for every reduction). M >= 0 up to the
    entropic bias (>= -eps log n), 0 for maps that are gradients of convex functions. The gradient uses the Sinkhorn
    coupling (envelope theorem), not the unrolled iterations. Combine it with a fitting loss on T's outputs.

    Args:
        epsilon: entropic regularization, > 0 (in units of the squared distances).
        num_iters: Sinkhorn iterations, >= 1.

    Example:
        >>> mapper = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
        >>> mapper.compile("adam", keras_reg.losses.MongeGapLoss(epsilon=0.1))
        >>> mapper.fit(x, x, epochs=10)          # y_true are the reference points themselves
    """

    def __init__(self, epsilon=0.1, num_iters=100, reduction="sum_over_batch_size", name="monge_gap", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_positive(epsilon, "epsilon")
        self.num_iters = check_positive_int(num_iters, "num_iters")

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("MongeGapLoss is a batch-level quantity: `sample_weight` does not apply.")
        return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        if tuple(y_true.shape[1:]) != tuple(y_pred.shape[1:]) and None not in tuple(y_true.shape[1:]) + tuple(y_pred.shape[1:]):
            raise ValueError(
                f"`y_true` (the reference points) and `y_pred` (their images) must have the same shape. "
                f"Received y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
            )
        return monge_gap(y_true, y_pred, self.epsilon, self.num_iters)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "num_iters": self.num_iters}


class _BatchLevelLoss(keras.losses.Loss):
    """A loss whose value is one number per batch: reductions and sample weights do not apply."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} is a batch-level quantity: `sample_weight` does not apply.")
        return self.call(y_true, y_pred)


@technique("Mixed Barlow Twins", paper=_MIXED_BT_PAPER, year=2023, kind="loss")
class MixedBarlowTwinsLoss(_BatchLevelLoss):
    """Barlow Twins on two embedding views, plus the mixed-sample cross-correlation regularizer when a mixed view
    is given.

        C(u, v) = u^T v / N on per-feature standardised embeddings (z - mean) / sqrt(var + eps), unbiased var
        L_BT = sum_i (1 - C(z_a, z_b)_ii)^2 + lambda sum_{i != j} C(z_a, z_b)_ij^2
        R = lambda s ( ||C(z_m, z_a) - alpha C(z_a, z_a) - (1 - alpha) C(z_b[pi], z_a)||^2
                     + ||C(z_m, z_b) - alpha C(z_a, z_b) - (1 - alpha) C(z_b[pi], z_b)||^2 )

    where z_m embeds the mixed input x_m = alpha x_a + (1 - alpha) x_b[pi]. Bandara et al., "Guarding Barlow Twins
    Against Overfitting with Mixed Samples" (2023): if input-space interpolation maps to linear interpolation of
    the (standardised) features, the mixed view's cross-correlation with each view is the same interpolation of the
    views' cross-correlations; the term keeps Barlow Twins from overfitting its redundancy-reduction objective.
    Formulas as in the authors' code (wgcban/mix-bt): the targets are differentiated too, lambda = 1/128 and s = 4
    in its CIFAR scripts. `y_pred` is (batch, 2, dim) = [z_a, z_b] (plain Barlow Twins; `y_true` ignored) or
    (batch, 3, dim) = [z_a, z_b, z_m] with `y_true` (batch, 2) = [pi_i, alpha]: the permutation index of each
    row's partner and the mixing coefficient, as `keras_reg.training.MixedBarlowTwins` builds them.

    Args:
        lambda_: weight of the off-diagonal (redundancy) terms, >= 0.
        mix_scale: s, the weight of the mixed-sample term relative to lambda, >= 0.
        epsilon: eps added to each feature's batch variance, >= 0 (default 1e-5, the BatchNorm1d epsilon of the
            Barlow Twins code); keeps the loss finite when a feature is constant over the batch.

    Example:
        >>> siamese = keras.Model(views, keras.layers.TimeDistributed(encoder)(views))   # (batch, V, dim)
        >>> model = keras_reg.training.RegularizedModel(siamese, [keras_reg.training.MixedBarlowTwins()])
        >>> model.compile("adam", keras_reg.losses.MixedBarlowTwinsLoss()); model.fit(two_views, np.zeros((n, 2)))
    """

    def __init__(self, lambda_=0.0078125, mix_scale=4.0, epsilon=1e-5, reduction="sum_over_batch_size",
                 name="mixed_barlow_twins", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.lambda_ = check_non_negative(lambda_, "lambda_")
        self.mix_scale = check_non_negative(mix_scale, "mix_scale")
        self.epsilon = check_non_negative(epsilon, "epsilon")

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] not in (2, 3):
            raise ValueError(
                "MixedBarlowTwinsLoss expects y_pred of shape (batch, 2, dim) = [z_a, z_b] or (batch, 3, dim) = "
                f"[z_a, z_b, z_mixed]. Received y_pred.shape={tuple(y_pred.shape)}"
            )
        z = ops.cast(y_pred, "float32")
        loss = barlow_twins_loss(z[:, 0], z[:, 1], self.lambda_, self.epsilon)
        if y_pred.shape[1] == 3:
            if len(y_true.shape) != 2 or (y_true.shape[-1] is not None and y_true.shape[-1] != 2):
                raise ValueError(
                    "With a mixed view, `y_true` must be (batch, 2) = [partner index, alpha]. "
                    f"Received y_true.shape={tuple(y_true.shape)}"
                )
            mixing = ops.cast(y_true, "float32")
            permutation = ops.cast(ops.round(mixing[:, 0]), "int32")
            alpha = mixing[0, 1]
            loss = loss + mixed_barlow_twins_regularizer(
                z[:, 0], z[:, 1], z[:, 2], permutation, alpha, self.lambda_, self.mix_scale, self.epsilon
            )
        return loss

    def get_config(self):
        return {**super().get_config(), "lambda_": self.lambda_, "mix_scale": self.mix_scale, "epsilon": self.epsilon}


@technique("BEER representation-rank bound", paper=_BEER_PAPER, year=2024, kind="loss")
class BEERLoss(_BatchLevelLoss):
    """BEER: penalises consecutive state-action representations that are more similar than the Bellman equation
    allows.

        ub = (||phi||^2 + gamma^2 ||phi'||^2 - r^2 / ||w||^2) / (2 gamma ||phi|| ||phi_T||)     (no gradient)
        L = beta * mean relu( cos(phi, phi_T) - ub )

    He et al., "Adaptive Regularization of Representation Rank as an Implicit Constraint of Bellman Equation" (ICLR
    2024): for a value function Q(s, a) = <w, phi(s, a)>, the Bellman equation bounds the cosine similarity of the
    representations of consecutive state-action pairs; penalising only violations of the bound regularises the
    representation rank adaptively. As in the authors' TD3 code (sweetice/BEER-ICLR2024): phi is the critic's
    penultimate feature of (s, a), phi' the critic's feature of (s', pi(s')) (held constant), phi_T the target
    critic's feature of (s', a'), w the critic's last-layer weights, beta = 1e-3. Add it to the critic's TD loss.
    `y_pred` is (batch, 3, dim) = [phi, phi', phi_T]; `y_true` is (batch, 2) = [reward, ||w||^2] (the squared norm
    repeated on every row, read from the critic's head in the training step).

    Args:
        discount: gamma, in (0, 1] (the code hard-codes 0.99).
        beta: the weight of the penalty, >= 0.

    Example:
        >>> beer = keras_reg.losses.BEERLoss(discount=0.99, beta=1e-3)
        >>> w2 = ops.sum(ops.square(critic_head.kernel)) * ops.ones_like(reward)
        >>> critic_loss = td_loss + beer(ops.stack([reward, w2], -1), ops.stack([phi, phi_next, phi_target], 1))
    """

    def __init__(self, discount=0.99, beta=1e-3, reduction="sum_over_batch_size", name="beer", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        discount = check_positive(discount, "discount")
        if discount > 1.0:
            raise ValueError(f"`discount` must be in (0, 1]. Received: discount={discount!r}")
        self.discount = discount
        self.beta = check_non_negative(beta, "beta")

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 3:
            raise ValueError(
                "BEERLoss expects y_pred of shape (batch, 3, dim) = [phi, phi_next, phi_target]. "
                f"Received y_pred.shape={tuple(y_pred.shape)}"
            )
        if len(y_true.shape) != 2 or (y_true.shape[-1] is not None and y_true.shape[-1] != 2):
            raise ValueError(
                f"BEERLoss expects y_true of shape (batch, 2) = [reward, ||w||^2]. Received y_true.shape={tuple(y_true.shape)}"
            )
        z = ops.cast(y_pred, "float32")
        t = ops.cast(y_true, "float32")
        head_norm_squared = ops.stop_gradient(t[0, 1])
        return self.beta * beer_penalty(z[:, 0], z[:, 1], z[:, 2], t[:, 0], head_norm_squared, self.discount)

    def get_config(self):
        return {**super().get_config(), "discount": self.discount, "beta": self.beta}


@technique("NMTune feature regularizers", paper=_NMTUNE_PAPER, year=2024, kind="layer")
class NMTuneRegularization(keras.layers.Layer):
    """NMTune's three feature-space regularizers on a tuned head over frozen pre-trained features; returns the tuned
    features unchanged.

        L = mse_weight * mean( (z_s / ||z_s|| - sg(f_w / ||f_w||))^2 )        consistency with the frozen features
          + cov_weight * sum_{i != j} Cov(z)_ij^2 / D                         decorrelation (unbiased covariance)
          - svd_weight * mean_{i <= k} s_i / sum_j s_j                        dominant singular values of z

    Chen et al., "Understanding and Mitigating the Label Noise in Pre-training on Downstream Tasks" (ICLR 2024):
    pre-training label noise reshapes the feature space; a light MLP z = g(f) on the frozen (black-box) features f,
    trained with these terms beside the task loss, "affines" it back (forms and weights of the terms as in the
    authors' code, Hhhhhhao/Noisy-Model-Learning `nml_tune.py`, which uses k = 5). Call it on [f, z] after the MLP;
    f and z must have the same width. With `paired_views` the batch is the concatenation [weak views; strong views]
    of the same examples (the authors' setting): the consistency term pairs z of the strong half with f of the weak
    half; otherwise it pairs each example with itself. The SVD and covariance terms use the whole batch. Losses are
    added only in training; the layer is the identity at inference.

    Args:
        mse_weight: weight of the consistency term, >= 0.
        cov_weight: weight of the covariance term, >= 0.
        svd_weight: weight of the singular-value term, >= 0.
        k: number of leading singular values, >= 1.
        paired_views: the batch holds [weak; strong] views of the same examples.

    Example:
        >>> f = frozen_backbone(inputs)                      # (batch, d), not trained
        >>> z = keras_reg.losses.NMTuneRegularization(1.0, 0.01, 0.01)([f, mlp(f)])
        >>> outputs = keras.layers.Dense(num_classes)(z)
    """

    def __init__(self, mse_weight=1.0, cov_weight=0.01, svd_weight=0.01, k=5, paired_views=False, **kwargs):
        super().__init__(**kwargs)
        self.mse_weight = check_non_negative(mse_weight, "mse_weight")
        self.cov_weight = check_non_negative(cov_weight, "cov_weight")
        self.svd_weight = check_non_negative(svd_weight, "svd_weight")
        self.k = check_positive_int(k, "k")
        self.paired_views = bool(paired_views)

    def penalty(self, features, tuned):
        f = ops.cast(features, "float32")
        z = ops.cast(tuned, "float32")
        if f.shape[-1] is not None and z.shape[-1] is not None and f.shape[-1] != z.shape[-1]:
            raise ValueError(
                f"NMTuneRegularization needs features and tuned features of the same width. Received "
                f"{tuple(f.shape)} and {tuple(z.shape)}"
            )
        total = ops.zeros((), "float32")
        if self.mse_weight:
            if self.paired_views:
                half = ops.shape(z)[0] // 2
                z_s, f_w = z[half:], f[:half]
            else:
                z_s, f_w = z, f
            unit = lambda v: v * ops.rsqrt(ops.maximum(ops.sum(ops.square(v), axis=-1, keepdims=True), 1e-24))  # noqa: E731
            total = total + self.mse_weight * ops.mean(ops.square(unit(z_s) - ops.stop_gradient(unit(f_w))))
        if self.cov_weight:
            total = total + self.cov_weight * off_diagonal_covariance_penalty(z)
        if self.svd_weight:
            values = singular_values(z)
            total = total - self.svd_weight * ops.mean((values / ops.sum(values))[: self.k])
        return total

    def call(self, inputs, training=None):
        features, tuned = inputs
        if training:
            self.add_loss(self.penalty(features, tuned))
        return tuned

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {
            **super().get_config(),
            "mse_weight": self.mse_weight,
            "cov_weight": self.cov_weight,
            "svd_weight": self.svd_weight,
            "k": self.k,
            "paired_views": self.paired_views,
        }

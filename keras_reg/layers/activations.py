"""Activation and output layers: StableMax, Mish, SIREN's sine, Dice."""

import keras
from keras import ops

from keras_reg.catalogue import technique
from keras_reg.functional import activations as F
from keras_reg.utils.validation import check_positive
from keras_reg.utils.validation import check_probability

_STABLEMAX_PAPER = "Grokking at the Edge of Numerical Stability"
_MISH_PAPER = "Mish: A Self Regularized Non-Monotonic Activation Function"
_SIREN_PAPER = "Implicit Neural Representations with Periodic Activation Functions"
_DIN_PAPER = "Deep Interest Network for Click-Through Rate Prediction"


def _check_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"`axis` must be an integer axis. Received: axis={axis!r}")
    return axis


@technique("StableMax", paper=_STABLEMAX_PAPER, year=2025, kind="layer")
class StableMax(keras.layers.Layer):
    """A softmax replacement that does not collapse numerically: probabilities from a linear-growth map.

        s(x) = x + 1 (x >= 0),   1 / (1 - x) (x < 0),      StableMax_i(x) = s(x_i) / sum_j s(x_j)

    From "Grokking at the Edge of Numerical Stability" (Prieto, Barsbey, Mediano & Birdal, 2025): with softmax, large
    logits round the correct-class probability to exactly 1 in floating point ("Softmax Collapse"), zeroing the
    gradient; s grows linearly, so outputs stay representable for logits of 1e4 and beyond. Use it as the output
    layer with a probability cross-entropy (`sparse_categorical_crossentropy`, `from_logits=False`).

    Args:
        axis: the class axis (default -1).

    Example:
        >>> logits = keras.layers.Dense(10)(h)
        >>> probs = keras_reg.layers.StableMax(dtype="float32")(logits)
        >>> model.compile(loss="sparse_categorical_crossentropy")
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = _check_axis(axis)

    def call(self, inputs):
        return F.stablemax(inputs, axis=self.axis)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@technique("Mish", paper=_MISH_PAPER, year=2019, kind="layer")
class Mish(keras.layers.Layer):
    """The Mish activation, mish(x) = x * tanh(softplus(x)) = x * tanh(ln(1 + e^x)).

    From "Mish: A Self Regularized Non-Monotonic Activation Function" (Misra, 2019): smooth, non-monotonic,
    unbounded above and bounded below (minimum about -0.3088 at x about -1.1924); the paper attributes a
    regularizing effect to its first derivative, f'(x) = tanh(sp(x)) + x sech^2(sp(x)) sigmoid(x). Same values
    as `keras.activations.mish`, as a layer with a catalogue row.

    Args:
        (none besides the standard Layer keyword arguments.)

    Example:
        >>> h = keras.layers.Dense(64)(x)
        >>> h = keras_reg.layers.Mish()(h)
        >>> y = keras.layers.Dense(10)(h)
    """

    def call(self, inputs):
        return F.mish(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


@technique("SIREN sine activation", paper=_SIREN_PAPER, year=2020, kind="layer")
class Sine(keras.layers.Layer):
    """SIREN's periodic activation, sin(w0 * x), applied to the pre-activation Wx + b of a Dense layer.

        phi(x) = sin(w0 * (W x + b)),   w0 = 30

    From "Implicit Neural Representations with Periodic Activation Functions" (Sitzmann, Martel, Bergman, Lindell &
    Wetzstein, 2020). Pair it with `keras_reg.initializers.SirenUniform(w0, is_first=...)` on the Dense
    kernel: the first layer W ~ U(-1/n, 1/n), the others W ~ U(-sqrt(6/n)/w0, sqrt(6/n)/w0), which gives w0 * Wx
    unit variance for arcsine-distributed inputs, so activations neither blow up nor vanish with depth.

    Args:
        w0: the frequency factor, > 0 (30 in the paper).

    Example:
        >>> init = keras_reg.initializers.SirenUniform(w0=30.0, is_first=True)
        >>> h = keras.layers.Dense(256, kernel_initializer=init)(coords)
        >>> h = keras_reg.layers.Sine(w0=30.0)(h)
    """

    def __init__(self, w0=30.0, **kwargs):
        super().__init__(**kwargs)
        self.w0 = check_positive(w0, "w0")

    def call(self, inputs):
        return F.sine(inputs, self.w0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "w0": self.w0}


@technique("Dice", paper=_DIN_PAPER, year=2018, kind="layer")
class Dice(keras.layers.Layer):
    """Data-adaptive activation: a PReLU whose rectification point follows the input distribution.

        p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)),      f(s) = p(s) * s + (1 - p(s)) * alpha * s

    From "Deep Interest Network for Click-Through Rate Prediction" (Zhou et al., 2018). E[s] and Var[s] are the
    mini-batch mean and (biased) variance of each feature in training and moving averages at inference
    (moving = momentum * moving + (1 - momentum) * batch); alpha is learnable per feature (initialised to 0, as in
    the authors' code) and eps = 1e-8 as in the paper. Statistics are computed in float32.

    Args:
        axis: the feature axis (default -1); statistics are taken over all other axes.
        momentum: the moving-average momentum, in [0, 1).
        epsilon: eps, > 0.
        alpha_initializer: the initializer of alpha (default zeros).

    Example:
        >>> h = keras.layers.Dense(80)(embeddings)
        >>> h = keras_reg.layers.Dice()(h)
        >>> y = keras.layers.Dense(1, activation="sigmoid")(h)
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-8, alpha_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.axis = _check_axis(axis)
        self.momentum = check_probability(momentum, "momentum")
        self.epsilon = check_positive(epsilon, "epsilon")
        self.alpha_initializer = keras.initializers.get(alpha_initializer)

    def build(self, input_shape):
        axis = self.axis % len(input_shape)
        features = input_shape[axis]
        if features is None:
            raise ValueError(f"Dice needs a known size on axis {self.axis}. Received shape {input_shape}.")
        self._axis = axis
        self.alpha = self.add_weight(shape=(features,), name="alpha", initializer=self.alpha_initializer)
        self.moving_mean = self.add_weight(
            shape=(features,), name="moving_mean", initializer="zeros", trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=(features,), name="moving_variance", initializer="ones", trainable=False, autocast=False
        )

    def _broadcast(self, v, rank):
        shape = [1] * rank
        shape[self._axis] = -1
        return ops.reshape(v, shape)

    def call(self, inputs, training=False):
        # Statistics in float32 (float64 when the layer computes in float64), whatever the input precision.
        dtype = "float64" if keras.backend.standardize_dtype(inputs.dtype) == "float64" else "float32"
        x = ops.cast(inputs, dtype)
        rank = len(inputs.shape)
        moving_mean = ops.cast(self.moving_mean, dtype)
        moving_variance = ops.cast(self.moving_variance, dtype)
        if training:
            reduce_axes = tuple(a for a in range(rank) if a != self._axis)
            mean = ops.mean(x, axis=reduce_axes)
            variance = ops.mean(ops.square(x - self._broadcast(mean, rank)), axis=reduce_axes)
            m = self.momentum
            self.moving_mean.assign(ops.cast(m * moving_mean + (1.0 - m) * mean, self.moving_mean.dtype))
            self.moving_variance.assign(
                ops.cast(m * moving_variance + (1.0 - m) * variance, self.moving_variance.dtype)
            )
        else:
            mean, variance = moving_mean, moving_variance
        alpha = ops.cast(self.alpha, dtype)
        y = F.dice(
            x, self._broadcast(mean, rank), self._broadcast(variance, rank), self._broadcast(alpha, rank),
            self.epsilon,
        )
        return ops.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
        }



_ORTHO_PAPER = "Polynomial, trigonometric, and tropical activations"


class _CoefficientSeriesActivation(keras.layers.Layer):
    """Shared by the activations that learn one coefficient vector [a_0..a_n] for all units."""

    def __init__(self, degree, coefficient_initializer, **kwargs):
        super().__init__(**kwargs)
        from keras_reg.utils.validation import check_positive_int

        self.degree = check_positive_int(degree, "degree")
        if coefficient_initializer is None:
            coefficient_initializer = self._default_coefficient_initializer()
        self.coefficient_initializer = keras.initializers.get(coefficient_initializer)

    def build(self, input_shape):
        self.coefficients = self.add_weight(
            shape=(self.degree + 1,), name="coefficients", initializer=self.coefficient_initializer
        )
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "degree": self.degree,
            "coefficient_initializer": keras.initializers.serialize(self.coefficient_initializer),
        }


@technique("Hermite activation", paper=_ORTHO_PAPER, year=2025, kind="layer")
class HermiteActivation(_CoefficientSeriesActivation):
    """A learnable activation: a Hermite-polynomial series with trainable coefficients.

        F(x) = sum_{k=0}^{n} a_k He_k(x) / k!,      He_{k+1}(x) = x He_k(x) - k He_{k-1}(x)

    with the variance-preserving initialisation a_0 = sqrt(1 - 1/n!) / sqrt(e), a_k = 1 / sqrt(e), which gives
    E[F(z)^2] = (1/e) sum_{k<n} 1/k! (close to 1) for z ~ N(0, 1). From "Polynomial, trigonometric, and tropical
    activations" (Khalfaoui-Hassani & Kesselheim, 2025), following its torchortho code (commit d9d7c98: basis
    normalised by k!, one coefficient vector shared by all units). Not included: the code's optional learnable
    clamp and its initialisation by fitting a given activation; the Fourier and tropical families are
    `FourierActivation`, `TropicalActivation` and `TropicalRationalActivation`.

    Args:
        degree: n, an integer >= 1.
        coefficient_initializer: initializer of [a_0..a_n] (default `HermiteCoefficients`, the paper's).

    Example:
        >>> h = keras.layers.Dense(64)(x)
        >>> h = keras_reg.layers.HermiteActivation(degree=3)(h)
        >>> y = keras.layers.Dense(10)(h)
    """

    def __init__(self, degree=3, coefficient_initializer=None, **kwargs):
        super().__init__(degree, coefficient_initializer, **kwargs)

    def _default_coefficient_initializer(self):
        from keras_reg.initializers.activations import HermiteCoefficients

        return HermiteCoefficients()

    def call(self, inputs):
        return F.hermite_activation(inputs, self.coefficients)


def _check_degree(degree):
    from keras_reg.utils.validation import check_positive_int

    return check_positive_int(degree, "degree")


def _initializer_or(value, default):
    return keras.initializers.get(value) if value is not None else default


def _slot_initializer(initializer, seed, slot):
    """An independent copy of a random `initializer` for the `slot`-th weight of a layer.

    Keras random initializers are stateless: one instance called twice (with an integer seed, or with seed=None,
    which Keras turns into one fixed default integer at construction) returns the same values. So each weight gets
    its own copy: seeded with `seed + slot` when the layer has a seed, else `initializer`'s own integer seed +
    slot, else a fresh default seed (what Keras' MultiHeadAttention does by cloning from its config; under
    `keras.utils.set_random_seed` the draws are still reproducible). Non-random initializers are returned as is.
    """
    config = initializer.get_config()
    if "seed" not in config:
        return initializer
    base = seed if seed is not None else getattr(initializer, "_init_seed", None)
    if isinstance(base, int) and not isinstance(base, bool):
        config["seed"] = base + slot
    elif base is not None:  # a SeedGenerator: stateful, so successive calls already differ
        return initializer
    return initializer.__class__.from_config(config)


@technique("Fourier activation", paper=_ORTHO_PAPER, year=2025, kind="layer")
class FourierActivation(keras.layers.Layer):
    """A learnable activation: a truncated Fourier series with trainable amplitudes, frequencies and phases.

        F(x) = a_0 + sum_{k=1}^{n} a_k cos(w_k x - phi_k) / k!

    initialised as a_0 = c sqrt(1 - 1/(n!)^2), a_k = c, w_k = k, phi_k = pi/4 with c = I_0(2)^(-1/2) (I_0 the
    modified Bessel function): the squared weights a_0^2 + sum_k (a_k/k!)^2 = sum_{k<n} (1/k!)^2 / I_0(2) sum to
    nearly 1, the trigonometric form of the Hermite family's variance-preserving rule. From "Polynomial,
    trigonometric, and tropical activations" (Khalfaoui-Hassani & Kesselheim, 2025), following its torchortho code
    (0.1.2, `FourierActivation`): one parameter set shared by all units, every parameter trainable, the k-th
    harmonic damped by the fixed 1/k!. Not included: the code's optional initialisation by fitting a given
    activation.

    Args:
        degree: n, the number of harmonics, an integer >= 1.

    Example:
        >>> h = keras.layers.Dense(64)(x)
        >>> h = keras_reg.layers.FourierActivation(degree=4)(h)
        >>> y = keras.layers.Dense(10)(h)
    """

    def __init__(self, degree=4, **kwargs):
        super().__init__(**kwargs)
        self.degree = _check_degree(degree)

    def build(self, input_shape):
        a0, a, w, phi = F.fourier_init(self.degree)
        n = self.degree
        const = keras.initializers.Constant
        self.fundamental = self.add_weight(shape=(), name="fundamental", initializer=const(a0))
        self.coefficients = self.add_weight(shape=(n,), name="coefficients", initializer=const(a))
        self.frequencies = self.add_weight(shape=(n,), name="frequencies", initializer=const(w))
        self.phases = self.add_weight(shape=(n,), name="phases", initializer=const(phi))
        self.built = True

    def call(self, inputs):
        return F.fourier_activation(inputs, self.fundamental, self.coefficients, self.frequencies, self.phases)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "degree": self.degree}


@technique("Tropical activation", paper=_ORTHO_PAPER, year=2025, kind="layer")
class TropicalActivation(_CoefficientSeriesActivation):
    """A learnable activation: a tropical (max-plus) polynomial with trainable coefficients.

        T(x) = (sqrt(2) / n) max_{k=0..n} (k x + a_k),   a_k = 1 at initialisation

    so that T starts as sqrt(2) relu(x) + sqrt(2)/n, the ReLU with He's variance-preserving gain sqrt(2). From
    "Polynomial, trigonometric, and tropical activations" (Khalfaoui-Hassani & Kesselheim, 2025), following its
    torchortho code (0.1.2, `TropicalActivation`): integer powers 0..n fixed, coefficients shared by all units.
    Piecewise linear and convex; exports as MUL/ADD/REDUCE_MAX.

    Args:
        degree: n, an integer >= 1.
        coefficient_initializer: initializer of [a_0..a_n] (default: ones, the code's).

    Example:
        >>> h = keras.layers.Dense(64)(x)
        >>> h = keras_reg.layers.TropicalActivation(degree=3)(h)
        >>> y = keras.layers.Dense(10)(h)
    """

    def __init__(self, degree=3, coefficient_initializer=None, **kwargs):
        super().__init__(degree, coefficient_initializer, **kwargs)

    def _default_coefficient_initializer(self):
        return keras.initializers.Ones()

    def call(self, inputs):
        return F.tropical_activation(inputs, self.coefficients)


@technique("Tropical activation", paper=_ORTHO_PAPER, year=2025, kind="layer")
class TropicalRationalActivation(keras.layers.Layer):
    """A learnable activation: a tropical rational function, the difference of two max-plus polynomials.

        R(x) = max_{k=0..n} (p_k x + c_k) - max_{k=0..n} (q_k x + d_k)

    with real powers p, q and coefficients c, d all trainable. From "Polynomial, trigonometric, and tropical
    activations" (Khalfaoui-Hassani & Kesselheim, 2025), following its torchortho code (0.1.2,
    `TropicalRationalActivation`), which draws all four vectors from N(0, 1) (no variance-preserving rule for this
    form; the code's alternative, fitting a given activation, is not included). Any continuous piecewise-linear
    function is such a difference.

    Args:
        degree: n (n + 1 terms per max), an integer >= 1.
        initializer: initializer of p, c, q and d (default: `RandomNormal(0, 1)`, the code's); a random one is
            copied per vector so that the four draws are independent.
        seed: optional integer seed of the (random) initializer; vector i is drawn with seed + i.

    Example:
        >>> h = keras.layers.Dense(64)(x)
        >>> h = keras_reg.layers.TropicalRationalActivation(degree=3, seed=0)(h)
        >>> y = keras.layers.Dense(10)(h)
    """

    def __init__(self, degree=3, initializer=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.degree = _check_degree(degree)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an integer. Received: seed={seed!r}")
        self.seed = seed
        self.initializer = _initializer_or(initializer, keras.initializers.RandomNormal(0.0, 1.0, seed=seed))

    def build(self, input_shape):
        shape = (self.degree + 1,)
        names = ("powers_num", "coefficients_num", "powers_den", "coefficients_den")
        for i, name in enumerate(names):
            init = _slot_initializer(self.initializer, self.seed, i)
            setattr(self, name, self.add_weight(shape=shape, name=name, initializer=init))
        self.built = True

    def call(self, inputs):
        return F.tropical_rational_activation(
            inputs, self.powers_num, self.coefficients_num, self.powers_den, self.coefficients_den
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "degree": self.degree,
            "initializer": keras.initializers.serialize(self.initializer),
            "seed": self.seed,
        }

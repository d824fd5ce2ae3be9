"""Shared pieces of the benchmark harness: environment, data, the small models, training and the measurements.

Everything here is plain Keras 3 on TensorFlow; the techniques come in through the experiment registry
(`benchmarks/registry.py`), never by name here.
"""

import dataclasses
import os
import platform
import subprocess
import threading
import time

import numpy as np

_CONFIGURED = {"done": False}


def configure_tensorflow(threads=2):
    """Keeps TensorFlow to `threads` cores (the machine is shared) and quiet. Call before any TF op."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _CONFIGURED["done"]:
        tf.get_logger().setLevel("ERROR")  # per-model retracing warnings: every arm builds a new model
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)  # fewer threads to oversubscribe shared cores
        except RuntimeError:  # already initialised (e.g. inside pytest): keep what is there
            pass
        _CONFIGURED["done"] = True
    return tf


# -- machine and load -----------------------------------------------------------------------------------------


def machine_info():
    """CPU model (lscpu), core count (nproc), memory and library versions."""
    import keras
    import tensorflow as tf

    model = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import psutil

        mem_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        mem_gib = None
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def load_average():
    """The 1-minute load average (other engineers' jobs share these cores)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class PeakRSS:
    """Samples the process' resident set size in a thread; `.peak` is the largest value seen (bytes).

    tracemalloc does not see TensorFlow's C++ allocations and `tf.config.experimental.get_memory_info('CPU:0')`
    raises "Allocator stats not available" on CPU, so the process RSS is what we can measure.
    """

    def __init__(self, interval=0.005):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.start_rss = self._proc.memory_info().rss
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


# -- data -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One data setting: a dataset, a training subset, and optional symmetric label noise on the training labels."""

    dataset: str = "mnist"
    n_train: int = 10000
    noise: float = 0.0
    noise_kind: str = "symmetric"
    n_test: int = 10000
    transform: str = ""  # a key of TRANSFORMS: a distribution shift between training and test data

    def label(self):
        noise = f", {self.noise:.0%} {self.noise_kind} label noise" if self.noise else ""
        shift = f", {TRANSFORMS[self.transform][0]}" if self.transform else ""
        return f"{self.dataset}, {self.n_train} train / {self.n_test} test{noise}{shift}"

    def scaled(self, n_train=None, n_test=None):
        return dataclasses.replace(self, n_train=n_train or self.n_train, n_test=n_test or self.n_test)


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray  # the (possibly noisy) labels the model is trained on
    y_train_clean: np.ndarray
    noisy_mask: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    extra_test: dict = dataclasses.field(default_factory=dict)  # name -> (x, y): other test sets of the setting
    data_dir: str = None  # where it was loaded from (a transform may load another dataset from there)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


_DATA_CACHE = {}


def load_setting(setting, data_dir=None, subset_seed=0):
    """Loads the dataset through `keras_reg.data.load`, takes a stratified-at-random subset and adds label noise.

    The subset and the noise depend only on `subset_seed` (fixed across seeds and arms): every arm of an
    experiment sees exactly the same data; the training seeds change initialisation and batch order.
    """
    from keras_reg import data as kr_data

    key = (setting, str(data_dir), subset_seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    full = kr_data.load(setting.dataset, path=data_dir)
    rng = np.random.default_rng(subset_seed)
    tr = rng.permutation(len(full.y_train))[: setting.n_train]
    te = rng.permutation(len(full.y_test))[: setting.n_test]
    x_train = kr_data.prepare_images(full.x_train[tr])
    x_test = kr_data.prepare_images(full.x_test[te])
    y_clean = full.y_train[tr].astype("int32")
    if setting.noise > 0:
        y_noisy, mask = kr_data.add_label_noise(
            y_clean, setting.noise, kind=setting.noise_kind, num_classes=full.num_classes, seed=subset_seed
        )
    else:
        y_noisy, mask = y_clean.copy(), np.zeros(len(y_clean), bool)
    data = Data(x_train, y_noisy.astype("int32"), y_clean, mask, x_test, full.y_test[te].astype("int32"),
                full.num_classes, full.source, data_dir=data_dir)
    if setting.transform:
        TRANSFORMS[setting.transform][1](data, np.random.default_rng(subset_seed + 1))
    _DATA_CACHE[key] = data
    return data


def _patch(x, positions, value=1.0):
    """A 3x3 patch of `value` at one of 10 places (2 rows of 5 along the top of the image) per image."""
    x = x.copy()
    for i, p in enumerate(positions):
        r, c = divmod(int(p), 5)
        x[i, 1 + 4 * r: 4 + 4 * r, 2 + 5 * c: 5 + 5 * c, :] = value
    return x


def _spurious_patch(data, rng, correlation=0.9):
    """Gradient-starvation setting: in training a patch sits at the label's place for `correlation` of the images
    (elsewhere at random): an easy, almost fully predictive feature beside the digit. `x_test` has the patch at a
    random place (the patch says nothing: only the digit features help); extra_test["spurious"] places it by label."""
    k = data.num_classes
    by_label = rng.random(len(data.y_train)) < correlation
    positions = np.where(by_label, data.y_train, rng.integers(0, k, len(data.y_train)))
    x_test = data.x_test
    data.extra_test["spurious"] = (_patch(x_test, data.y_test), data.y_test)
    data.x_train = _patch(data.x_train, positions)
    data.x_test = _patch(x_test, rng.integers(0, k, len(data.y_test)))


def _rotate(degrees):
    """Fine-tuning target: images rotated by `degrees` (bilinear, same size) for training and testing;
    extra_test["shift"] is the original, upright test set (the pre-training distribution)."""

    def transform(data, rng):
        from scipy.ndimage import rotate

        turn = lambda x: np.clip(rotate(x, degrees, axes=(1, 2), reshape=False, order=1), 0.0, 1.0).astype("float32")
        data.extra_test["shift"] = (data.x_test, data.y_test)
        data.x_train = turn(data.x_train)
        data.x_test = turn(data.x_test)

    return transform


TRANSFORMS = {
    "spurious_patch": ("a label-placed patch on 90% of the training images, a random one on the test images",
                       _spurious_patch),
    "rotate30": ("images rotated by 30 degrees; the shift set is the upright images", _rotate(30)),
}


# -- models ---------------------------------------------------------------------------------------------------


def small_cnn(input_shape, num_classes, filters=(16, 32), kernel_regularizer=None, wrap=None, act_marker=None,
              dense_regularizer=None, hidden=64, norm=None, after_act=None, softmax=False):
    """Conv(3x3, same)-ReLU-MaxPool x 2, Flatten, Dense(hidden)-ReLU, Dense(logits): the model every experiment
    uses (the hidden layer gives it the capacity to memorise noisy labels, as the label-noise papers' nets do).

    kernel_regularizer: a callable `() -> regularizer` (a fresh one per conv layer) or None.
    wrap: a callable `(layer) -> layer` applied to every Conv/Dense layer (e.g. a quantization-noise wrapper).
    act_marker: a callable `(name) -> layer` inserted after each ReLU (the activation-quantization points); the
        layers are named "act_q<i>" so the quantized evaluation finds them.
    norm: a callable `(name) -> layer` (a batch normalization) inserted between each conv layer and its ReLU.
    after_act: a callable `(i) -> layer or None` inserted after the i-th conv layer's ReLU (e.g. DropBlock).
    softmax: end with a softmax (probabilities) instead of logits.
    """
    import keras

    wrap = wrap or (lambda layer: layer)
    layers = [keras.Input(input_shape)]
    for i, f in enumerate(filters):
        reg = kernel_regularizer() if kernel_regularizer else None
        layers.append(wrap(keras.layers.Conv2D(f, 3, padding="same", kernel_regularizer=reg, name=f"conv{i}")))
        if norm is not None:
            layers.append(norm(f"norm{i}"))
        layers.append(keras.layers.ReLU(name=f"relu{i}"))
        if act_marker is not None:
            layers.append(act_marker(f"act_q{i}"))
        extra = after_act(i) if after_act is not None else None
        if extra is not None:
            layers.append(extra)
        layers.append(keras.layers.MaxPooling2D(name=f"pool{i}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    if hidden:
        layers.append(wrap(keras.layers.Dense(hidden, name="hidden")))
        layers.append(keras.layers.ReLU(name="relu_hidden"))
        if act_marker is not None:
            layers.append(act_marker(f"act_q{len(filters)}"))
    layers.append(wrap(keras.layers.Dense(num_classes, kernel_regularizer=dense_regularizer, name="logits")))
    if softmax:
        layers.append(keras.layers.Activation("softmax", dtype="float32", name="softmax"))
    return keras.Sequential(layers, name="small_cnn")


def mlp(input_shape, num_classes, hidden=(256, 256), wrap=None, softmax=False):
    """Flatten, Dense(h)-ReLU for h in `hidden`, Dense(logits): a network that memorises noisy labels quickly."""
    import keras

    wrap = wrap or (lambda layer: layer)
    layers = [keras.Input(input_shape), keras.layers.Flatten(name="flatten")]
    for i, h in enumerate(hidden):
        layers += [wrap(keras.layers.Dense(h, name=f"dense{i}")), keras.layers.ReLU(name=f"relu{i}")]
    layers.append(wrap(keras.layers.Dense(num_classes, name="logits")))
    if softmax:
        layers.append(keras.layers.Activation("softmax", dtype="float32", name="softmax"))
    return keras.Sequential(layers, name="mlp")


def residual_cnn(input_shape, num_classes, width=16, blocks=3, branch=None, join=None, after_block=None, hidden=64):
    """Conv(width)-ReLU-MaxPool, then `blocks` residual blocks x + f(x), f = Conv-ReLU-Conv (3x3, same), ReLU after
    the join, then MaxPool, Flatten, Dense(hidden)-ReLU, Dense(logits).

    branch: `(i, f_x) -> tensor`, applied to the residual branch of block i (e.g. DropPath).
    join: `(i, x, f_x) -> tensor`, the join of block i (default: Add; e.g. StochasticDepth).
    after_block: `(i) -> layer or None`, applied to the output of block i (e.g. DropBlock).
    """
    import keras

    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stem")(inputs)
    h = keras.layers.MaxPooling2D(name="pool0")(h)
    for i in range(blocks):
        f = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{i}_conv0")(h)
        f = keras.layers.Conv2D(width, 3, padding="same", name=f"block{i}_conv1")(f)
        if branch is not None:
            f = branch(i, f)
        h = join(i, h, f) if join is not None else keras.layers.Add(name=f"block{i}_add")([h, f])
        h = keras.layers.ReLU(name=f"block{i}_relu")(h)
        extra = after_block(i) if after_block is not None else None
        if extra is not None:
            h = extra(h)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="residual_cnn")


def inner_model(model):
    """The plain network inside a `RegularizedModel` (or the model itself)."""
    import keras

    inner = getattr(model, "model", None)
    return inner if isinstance(inner, keras.Model) else model


def conv_layers(net):
    import keras

    out = []
    for layer in net.layers:
        core = getattr(layer, "layer", layer)
        if isinstance(core, keras.layers.Conv2D):
            out.append((layer, core))
    return out


# -- training -------------------------------------------------------------------------------------------------


class EpochTimer:
    """A Keras callback recording wall time per epoch and the per-epoch logs."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.epoch_seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.epoch_seconds.append(time.perf_counter() - self._t)

        return _Timer()


def train(model, x, y, x_val, y_val, epochs, batch_size, seed, verbose=0, callbacks=(), validate=True):
    """`fit` with the test set as validation data, so the history is the test-accuracy curve (`validate=False`
    when the fitted targets are not labels, e.g. distillation placeholders). `epochs=0` trains nothing."""
    timer = EpochTimer()
    if epochs == 0:
        return {}, []
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val) if validate else None,
        validation_batch_size=1000, shuffle=True, verbose=verbose, callbacks=[timer, *callbacks],
    )
    return history.history, timer.epoch_seconds


def accuracy(net, x, y, batch_size=1000):
    logits = net.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


# -- measurements ---------------------------------------------------------------------------------------------


def orthogonality_error(net):
    """max over conv layers of max |sigma - 1| of the circular, stride-1 convolution on the layer's input size.

    The singular values come from `keras_reg.functional.circular_conv_singular_values` (exact, via the DFT).
    Also returns the per-layer values.
    """
    from keras_reg.functional import circular_conv_singular_values

    per_layer = {}
    for outer, core in conv_layers(net):
        size = int(outer.input.shape[1])
        sv = circular_conv_singular_values(np.asarray(core.kernel.numpy()), size)
        per_layer[core.name] = float(np.max(np.abs(sv - 1.0)))
    return max(per_layer.values()), per_layer


def _kernel_variables(net):
    return [v for v in net.weights if v.path.endswith("kernel") and len(v.shape) >= 2]


def quantized_accuracy(net, x, y, weight_bits=None, activation_bits=None, batch_size=1000):
    """Test accuracy with weights fake-quantized per output channel to `weight_bits` (keras_reg.functional.
    fake_quantize, axis=-1) and/or the outputs of the "act_q*" layers fake-quantized per tensor (per batch range)
    to `activation_bits`. The weights are restored afterwards."""
    import keras

    from keras_reg.functional import fake_quantize

    saved = []
    if weight_bits is not None:
        for v in _kernel_variables(net):
            saved.append((v, v.numpy()))
            v.assign(fake_quantize(v.value, weight_bits, axis=-1))
    try:
        correct = 0
        for start in range(0, len(x), batch_size):
            h = keras.ops.convert_to_tensor(x[start:start + batch_size])
            if activation_bits is None:  # any network, Sequential or functional
                h = net(h, training=False)
            else:  # the "act_q*" points are found by walking a layer chain (a Sequential or a chain-shaped model)
                for layer in net.layers:
                    if isinstance(layer, keras.layers.InputLayer):
                        continue
                    h = layer(h, training=False)
                    if layer.name.startswith("act_q"):
                        h = fake_quantize(h, activation_bits)
            correct += int(np.sum(np.argmax(keras.ops.convert_to_numpy(h), -1) == y[start:start + batch_size]))
    finally:
        for v, value in saved:
            v.assign(value)
    return correct / len(x)


def outputs_probabilities(net):
    """Whether the network ends in a softmax (probabilities) rather than logits."""
    import keras

    last = net.layers[-1]
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or isinstance(last, keras.layers.Softmax)


def logits_of(net, x, training=False):
    """The network's logits (log-probabilities when it ends in a softmax), as a float32 tensor."""
    import keras

    out = keras.ops.cast(net(x, training=training), "float32")
    return keras.ops.log(keras.ops.clip(out, 1e-12, 1.0)) if outputs_probabilities(net) else out


def predict_logits(net, x, batch_size=1000):
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(logits_of(net, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def per_sample_ce(net, x, y, training=False):
    import keras

    return keras.losses.sparse_categorical_crossentropy(y, logits_of(net, x, training), from_logits=True)


def _ce(net, x, y):
    import keras

    return keras.ops.mean(per_sample_ce(net, x, y))


def ascent_sharpness(net, x, y, rho=0.05):
    """L(w + rho g/||g||) - L(w) on a fixed batch: the loss increase under one rho-ball ascent step (SAM's
    first-order estimate of the worst case in the ball), computed with `keras_reg.functional.sam_perturbation`."""
    import tensorflow as tf

    from keras_reg.functional import sam_perturbation

    variables = net.trainable_variables
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    with tf.GradientTape() as tape:
        loss = _ce(net, x, y)
    grads = tape.gradient(loss, variables)
    steps = sam_perturbation(grads, [v.value for v in variables], rho)
    saved = [v.numpy() for v in variables]
    try:
        for v, e in zip(variables, steps):
            v.assign_add(e)
        perturbed = _ce(net, x, y)
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
    return float(perturbed - loss)


def hessian_top_eigenvalue(net, x, y, iterations=20, seed=0):
    """Largest-magnitude eigenvalue of the training-loss Hessian on a fixed batch, by power iteration on
    Hessian-vector products (double backprop)."""
    import tensorflow as tf

    variables = net.trainable_variables
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)

    @tf.function
    def hvp(vector):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = _ce(net, x, y)
            grads = inner.gradient(loss, variables)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
        return outer.gradient(dot, variables)

    rng = np.random.default_rng(seed)
    vector = [tf.constant(rng.standard_normal(v.shape), tf.float32) for v in variables]
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(v * v) for v in vector]))
        vector = [v / norm for v in vector]
        hv = hvp(vector)
        eigenvalue = float(tf.add_n([tf.reduce_sum(a * b) for a, b in zip(vector, hv)]))
        vector = hv
    return eigenvalue


# -- more measurements (see benchmarks/metrics.py) ----------------------------------------------------------


def probabilities(net, x, kind="softmax"):
    """Class probabilities: the softmax (or, kind="stablemax", keras_reg.functional.stablemax) of the logits."""
    import keras

    logits = predict_logits(net, x)
    if kind == "stablemax":
        from keras_reg.functional import stablemax

        return keras.ops.convert_to_numpy(stablemax(keras.ops.convert_to_tensor(logits)))
    return keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.convert_to_tensor(logits), axis=-1))


def mean_abs_logz(net, x):
    logits = predict_logits(net, x).astype("float64")
    top = logits.max(-1, keepdims=True)
    return float(np.mean(np.abs(top[:, 0] + np.log(np.exp(logits - top).sum(-1)))))


def collapse_fraction(net, x, y, kind="softmax"):
    """Fraction of samples whose float32 cross-entropy is exactly 0: the correct-class probability rounded to 1
    (Softmax Collapse, Prieto et al. 2025). kind="stablemax" takes the loss through StableMax."""
    import keras

    logits = keras.ops.convert_to_tensor(predict_logits(net, x))
    if kind == "stablemax":
        from keras_reg.functional import log_stablemax

        log_p = log_stablemax(logits)
        loss = -keras.ops.take_along_axis(log_p, keras.ops.convert_to_tensor(y[:, None].astype("int32")), axis=-1)
    else:
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return float(np.mean(keras.ops.convert_to_numpy(loss) == 0.0))


def kernel_norm(net):
    return float(np.sqrt(sum(float(np.sum(np.square(v.numpy()))) for v in _kernel_variables(net))))


def deployed_kernels(net):
    """(name, kernel) of every Dense/Conv layer as deployed (a wrapper's `folded_kernel()` when it has one)."""
    out = []
    for layer in net.layers:
        if hasattr(layer, "folded_kernel"):
            out.append((layer.name, np.asarray(layer.folded_kernel())))
        elif getattr(layer, "kernel", None) is not None:
            out.append((layer.name, layer.kernel.numpy()))
    return out


def nm_fraction(net, n, m):
    """Fraction of the groups of m consecutive input weights with at most n non-zeros, over the layers whose input
    channels are a multiple of m (larger than m)."""
    ok = total = 0
    for _, kernel in deployed_kernels(net):
        fan_in, fan_out = kernel.shape[-2], kernel.shape[-1]
        if fan_in % m or fan_in <= m:
            continue
        groups = kernel.reshape(-1, fan_in // m, m, fan_out)
        nonzero = np.count_nonzero(groups, axis=2)
        ok += int(np.sum(nonzero <= n))
        total += nonzero.size
    return ok / total if total else float("nan")


def verified_accuracy(net, x, y, epsilon=0.1):
    """Fraction of samples certified robust at L-inf radius `epsilon` by interval bound propagation
    (`keras_reg.training.IntervalBoundPropagation.bounds` on the trained network, inputs clipped to [0, 1])."""
    import keras

    from keras_reg.functional.interval import worst_case_logits
    from keras_reg.training import IntervalBoundPropagation

    ibp = IntervalBoundPropagation(epsilon=epsilon, input_range=(0.0, 1.0))
    ibp.attach(net)
    lower, upper = ibp.bounds(keras.ops.convert_to_tensor(x), epsilon)
    worst = worst_case_logits(lower, upper, keras.ops.convert_to_tensor(y), lower.shape[-1])
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(worst), -1) == y))


def pgd_accuracy(net, x, y, epsilon=0.1, steps=10, step_size=None):
    """Accuracy under an L-inf PGD attack (from the clean image, signed-gradient steps, projected, clipped to
    [0, 1])."""
    import tensorflow as tf

    step_size = step_size or epsilon / 4
    x0 = tf.convert_to_tensor(x)
    y_t = tf.convert_to_tensor(y)
    adv = tf.identity(x0)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            loss = tf.reduce_sum(per_sample_ce(net, adv, y_t))
        adv = adv + step_size * tf.sign(tape.gradient(loss, adv))
        adv = tf.clip_by_value(tf.clip_by_value(adv, x0 - epsilon, x0 + epsilon), 0.0, 1.0)
    return accuracy(net, adv.numpy(), y)


def linearity_error(net, x, y, epsilon=0.1, repeats=4, seed=0):
    """ELLE's local-linearity error of the per-sample cross-entropy in the L-inf box of radius `epsilon`
    (`keras_reg.functional.elle_linearity_error`), averaged over `repeats` random triplets per sample."""
    import keras

    from keras_reg.functional import elle_linearity_error

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        x_a = (x + rng.uniform(-epsilon, epsilon, x.shape)).astype("float32")
        x_b = (x + rng.uniform(-epsilon, epsilon, x.shape)).astype("float32")
        alpha = rng.uniform(0, 1, (len(x),) + (1,) * (x.ndim - 1)).astype("float32")
        x_c = (1 - alpha) * x_a + alpha * x_b
        losses = [per_sample_ce(net, v, y) for v in (x_a, x_b, x_c)]
        values.append(float(elle_linearity_error(*losses, keras.ops.convert_to_tensor(alpha.reshape(-1)))))
    return float(np.mean(values))


def layer_outputs(net, layer_name, x, batch_size=500):
    """The outputs of the layer `layer_name` of `net` on the inputs `x` (inference mode), as numpy."""
    import keras

    return keras.Model(net.inputs, net.get_layer(layer_name).output).predict(x, batch_size=batch_size, verbose=0)


def probe_accuracy(net, data, layer_name="flatten", n_train=1500):
    """Linear-probe accuracy: logistic regression on the features of `layer_name`, fitted on the first `n_train`
    training images with their clean labels, scored on the test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    f_train = layer_outputs(net, layer_name, data.x_train[:n_train], 1000).reshape(min(n_train, len(data.x_train)),
                                                                                     -1)
    f_test = layer_outputs(net, layer_name, data.x_test, 1000).reshape(len(data.x_test), -1)
    scaler = StandardScaler().fit(f_train)
    probe = LogisticRegression(max_iter=300, C=0.1).fit(scaler.transform(f_train), data.y_train_clean[:n_train])
    return float(probe.score(scaler.transform(f_test), data.y_test))

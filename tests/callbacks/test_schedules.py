import keras
import numpy as np
import pytest

from keras_reg.callbacks import RegularizationSchedule
from keras_reg.callbacks import WarmupDecay
from keras_reg.regularizers import OrthogonalConvRegularizer
from keras_reg.testing import contract
from keras_reg.training import RegularizedModel
from keras_reg.training import SharpnessAwareMinimization


def test_warmup_decay_values():
    s = WarmupDecay(peak=1.0, warmup=4, decay=4, final=0.2, kind="linear")
    np.testing.assert_allclose([s(t) for t in range(10)], [0.25, 0.5, 0.75, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    c = WarmupDecay(peak=2.0, warmup=0, decay=2, final=0.0, kind="cosine")
    np.testing.assert_allclose([c(0), c(1), c(2)], [2.0, 1.0, 0.0], atol=1e-12)


def test_warmup_first_values_are_exact_and_documented():
    # regression: the docstring said peak * min(1, t / warmup) (0 at t = 0) while the code gives
    # peak * (t + 1) / warmup; the (t + 1) convention is kept (no step spent at 0) and now documented.
    s = WarmupDecay(peak=1e-3, warmup=2)
    assert [s(0), s(1), s(2), s(10)] == [1e-3 * 1 / 2, 1e-3 * 2 / 2, 1e-3, 1e-3]
    assert s(0) == 0.0005
    assert [WarmupDecay(peak=3.0, warmup=1)(t) for t in range(3)] == [3.0, 3.0, 3.0]
    assert [WarmupDecay(peak=1.0, warmup=4, kind="constant")(t) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert "peak * (t + 1) / warmup" in WarmupDecay.__doc__ and "min(1, t / warmup)" not in WarmupDecay.__doc__


def test_schedule_changes_the_penalty_inside_fit():
    x, y = contract.classification_data((8, 8, 2))
    reg = OrthogonalConvRegularizer(0.0)
    model = contract.conv_classifier(kernel_regularizer=reg)
    model.compile("sgd", "sparse_categorical_crossentropy")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((reg.factor, float(self.model.losses[0])))

    schedule = RegularizationSchedule("conv.kernel_regularizer.factor", [0.0, 0.5, 1.0])
    model.fit(x, y, epochs=3, verbose=0, callbacks=[schedule, Record()])
    assert [f for f, _ in seen] == [0.0, 0.5, 1.0]
    # The traced step used the new factor: the loss tracked by the model is factor * Lorth(kernel).
    kernel = model.get_layer("conv").kernel
    assert seen[2][1] == pytest.approx(float(OrthogonalConvRegularizer(1.0)(kernel)), rel=1e-4)


def test_schedule_reaches_a_technique_of_a_regularized_model():
    x, y = contract.classification_data()
    sam = SharpnessAwareMinimization(0.05, name="sam")
    model = RegularizedModel(contract.dense_classifier(), [sam])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[RegularizationSchedule("sam.rho", WarmupDecay(0.2, warmup=2))])
    assert sam.rho == pytest.approx(0.2)


def test_bad_path_is_reported():
    x, y = contract.classification_data()
    model = contract.dense_classifier()
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="nothere"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[RegularizationSchedule("nothere.factor", [1.0])])


def test_non_finite_schedule_values_raise():
    cb = RegularizationSchedule("a.b", lambda t: float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        cb.value_at(0)


class _Scaled(keras.layers.Layer):
    def build(self, input_shape):
        self.coefficient = self.add_weight(shape=(), initializer="zeros", trainable=False, name="coefficient")

    def call(self, x):
        return x * (1.0 + self.coefficient)


def test_batch_schedule_counts_optimizer_steps_and_assigns_variables_without_retrace():
    x, y = contract.classification_data()
    model = contract.dense_classifier(middle=_Scaled(name="scaled"))
    model.compile("sgd", "sparse_categorical_crossentropy")
    layer = model.get_layer("scaled")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 3 optimizer steps before the schedule
    seen, traces = [], []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(layer.coefficient.numpy()))
            traces.append(self.model.train_function)

    cb = RegularizationSchedule("scaled.coefficient", lambda t: 0.5 * t, per="batch", variables_only=True)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb, Record()])
    assert seen == [1.5, 2.0, 2.5]
    assert len({id(f) for f in traces}) == 1  # a variable target never rebuilds the train function
    with pytest.raises(ValueError, match="not a keras.Variable"):
        bad = RegularizationSchedule("hidden.units", [4.0], variables_only=True)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[bad])


def test_companion_decay_is_the_shared_schedule():
    from keras_reg.training import CompanionDecay

    decay = CompanionDecay(4)
    assert isinstance(decay, RegularizationSchedule) and decay.per == "epoch"
    assert [decay.value_at(t) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert type(decay).from_config(decay.get_config()).epochs == 4


contract.install(
    contract.ComponentCase(
        name="regularization_schedule",
        make=lambda: RegularizationSchedule("hidden.kernel_regularizer.l2", WarmupDecay(0.01, warmup=2)),
        model=lambda cb: contract.dense_classifier(kernel_regularizer=keras.regularizers.L2(0.0)),
        callbacks=lambda cb: [cb],
        mixed_precision=True,
        bad_args=[
            (lambda: RegularizationSchedule("", [1.0]), "path"),
            (lambda: RegularizationSchedule("a.b", [1.0], per="step"), "per"),
            (lambda: RegularizationSchedule("a.b", []), "schedule"),
            (lambda: WarmupDecay(peak=-1.0), "peak"),
            (lambda: WarmupDecay(peak=1.0, kind="exp"), "kind"),
        ],
    ),
    globals(),
)

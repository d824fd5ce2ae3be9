"""The composable training-step mechanism.

Like an optax transformation, each `StepTechnique` changes one part of the step and knows nothing of the others:

    transform_batch(x, y, sample_weight)      -> (x, y, sample_weight)     e.g. mixup
    wrap_gradient(grad_fn)                    -> grad_fn                   e.g. SAM, gradient-norm penalties
    transform_loss(loss, context)             -> (loss, metrics)           e.g. input-space penalties
    transform_gradients(grads, weights)       -> grads                     e.g. clipping

A gradient function maps `(x, y, sample_weight, weights=None)` to a `StepOutput`. `weights=None` means "at the
model's current weights, updating its state" (BatchNorm statistics, per-sample targets); explicit weight values mean
a stateless pass whose state updates are discarded, so state moves once per step however many passes a technique
needs. `RegularizedModel(model, techniques=[...])` composes the list: batch transforms in order, then the first
technique's gradient wrapper outermost, then gradient transforms in order. `transform_loss` runs inside every
gradient pass (in order, after the compiled loss): it adds terms that need the model itself (input-space penalties,
interval bounds) and so are differentiated together with the loss, at that pass's weights. Techniques with
per-sample state get the batch's sample indices (when the data carries them, `keras_reg.data.with_sample_index`)
from `keras_reg.training.current_sample_context()` in `transform_batch` (run once per step) and from
`StepContext.index` in `transform_loss` (where only the `stateful` pass may write state).
"""

import collections
import functools
import inspect

import keras

StepOutput = collections.namedtuple("StepOutput", ["loss", "grads", "y_pred", "weights", "metrics"])

# Targets of a mixed batch (mixup): the loss is lam * loss(y_a, sample_weight) + (1 - lam) * loss(y_b, sample_weight_b).
MixedTargets = collections.namedtuple("MixedTargets", ["y_a", "y_b", "lam", "sample_weight_b"])


class StepContext:
    """What `transform_loss` sees of one gradient pass.

    Attributes:
        x, y, sample_weight: the (transformed) batch; `y` may be `MixedTargets`.
        y_pred: the model's training-mode output on `x` in this pass.
        stateful: True in the pass at the current weights (the one allowed to update technique state).
        forward: `forward(inputs)` runs the model in training mode at this pass's weights and drops its state
            updates (BatchNorm statistics move once per step, in the main forward pass).
        index: the batch's sample indices, or None when the data carries none.
    """

    def __init__(self, x, y, y_pred, sample_weight, stateful, forward, index=None):
        self.x, self.y, self.y_pred, self.sample_weight = x, y, y_pred, sample_weight
        self.stateful = stateful
        self.forward = forward
        self.index = index

    @property
    def labels(self):
        return self.y.y_a if isinstance(self.y, MixedTargets) else self.y

    @staticmethod
    def scale(term):
        """A batch-mean term scaled like Keras losses under a distribution strategy (1 / replicas)."""
        from keras.src.losses.loss import scale_loss_for_distribution

        return scale_loss_for_distribution(term)


@keras.saving.register_keras_serializable(package="keras_reg")
class StepTechnique(keras.layers.Layer):
    """Base class of training-step techniques.

    It is a Layer only so that its state (variables, sub-networks) is tracked, distributed and saved with the model;
    it is never called on inputs. Subclasses override any of the three hooks and list the names of the metrics they
    report in `metric_names`; `extra_passes` documents the forward/backward passes they add per step.
    """

    metric_names = ()
    extra_passes = 0

    def attach(self, model):
        """Called once by `RegularizedModel` (before training) with the wrapped model."""

    def transform_batch(self, x, y, sample_weight):
        return x, y, sample_weight

    def wrap_gradient(self, grad_fn):
        return grad_fn

    def transform_loss(self, loss, context):
        """Returns (loss, metrics): add this technique's term to the pass's (distribution-scaled) loss."""
        return loss, {}

    def transform_gradients(self, grads, weights):
        return grads

    def call(self, inputs):
        raise NotImplementedError(f"{type(self).__name__} is a training-step technique; it is not called on inputs.")


def per_sample_loss(loss, from_logits, owner):
    """(per-sample function, loss to keep) for a loss given by name, as a `keras.losses.Loss` (or its serialized
    dict) or as a callable (y_true, y_pred) -> per-sample values. `from_logits` applies to a name (a Keras loss
    function with a `from_logits` argument); a loss object or function fixes it itself."""
    if isinstance(loss, dict):
        loss = keras.losses.deserialize(loss)
    if isinstance(loss, str):
        fn = per_sample_loss_fn(loss, owner)
        if isinstance(fn, keras.losses.Loss):  # a class name such as "SparseCategoricalCrossentropy"
            if from_logits:
                config = fn.get_config()
                if "from_logits" not in config:
                    raise ValueError(f"`from_logits` of {owner}: the loss {loss!r} has no `from_logits` argument.")
                fn = type(fn).from_config({**config, "from_logits": True})
            return fn.call, loss
        if from_logits:
            if "from_logits" not in inspect.signature(fn).parameters:
                raise ValueError(f"`from_logits` of {owner}: the loss {loss!r} has no `from_logits` argument.")
            fn = functools.partial(fn, from_logits=True)
        return fn, loss
    if from_logits:
        raise ValueError(
            f"`from_logits=True` of {owner} applies to a loss given by name; a loss object or function sets it "
            f"itself, e.g. keras.losses.SparseCategoricalCrossentropy(from_logits=True). Received: loss={loss!r}"
        )
    if isinstance(loss, keras.losses.Loss):
        return loss.call, loss
    if callable(loss):
        return loss, loss
    raise ValueError(
        f"`loss` of {owner} must be the name of a Keras loss, a `keras.losses.Loss` or a callable "
        f"(y_true, y_pred) -> per-sample losses. Received: loss={loss!r}"
    )


def per_sample_loss_fn(loss, owner):
    """The per-sample function of a Keras loss given by name (e.g. "sparse_categorical_crossentropy")."""
    if not isinstance(loss, str):
        raise ValueError(f"`loss` of {owner} must be the name of a Keras loss function. Received: loss={loss!r}")
    try:
        return keras.losses.get(loss)
    except ValueError:
        raise ValueError(f"`loss` of {owner} must be the name of a Keras loss function. Received: loss={loss!r}") \
            from None

"""Schedules of regularization strength during `fit`."""

import math

import keras

from keras_reg.catalogue import technique
from keras_reg.utils.validation import check_non_negative


@keras.saving.register_keras_serializable(package="keras_reg")
class WarmupDecay:
    """A warmup to `peak`, then a decay to `final`:

        value(t) = peak * (t + 1) / warmup                          for t < warmup
        value(t) = final + (peak - final) * shape((t - warmup) / decay)   for t >= warmup (progress capped at 1)

    with shape(p) = (1 + cos(pi p)) / 2 ("cosine"), 1 - p ("linear"), or value(t) = peak ("constant", or decay = 0).
    The warmup counts t + 1 (the usual convention) so that its first step already applies peak / warmup instead of
    being spent at 0, and it reaches `peak` at t = warmup - 1; e.g. peak 1e-3, warmup 2: 5e-4, 1e-3, 1e-3, ...
    `t` counts epochs or batches (from 0), as the callback says.
    """

    KINDS = ("cosine", "linear", "constant")

    def __init__(self, peak, warmup=0, decay=0, final=0.0, kind="cosine"):
        self.peak = check_non_negative(peak, "peak")
        self.final = check_non_negative(final, "final")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup` must be an integer >= 0. Received: warmup={warmup!r}")
        if not isinstance(decay, int) or decay < 0:
            raise ValueError(f"`decay` must be an integer >= 0. Received: decay={decay!r}")
        if kind not in self.KINDS:
            raise ValueError(f"`kind` must be one of {self.KINDS}. Received: kind={kind!r}")
        self.warmup, self.decay, self.kind = warmup, decay, kind

    def __call__(self, t):
        if t < self.warmup:
            return self.peak * (t + 1) / self.warmup
        if self.kind == "constant" or self.decay == 0:
            return self.peak
        progress = min(1.0, (t - self.warmup) / self.decay)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1 - progress
        return self.final + (self.peak - self.final) * shape

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "decay": self.decay, "final": self.final, "kind": self.kind}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def resolve_attribute(model, path):
    """(owner, attribute name) for a dotted path from a model.

    Each step is a layer name (looked up with `get_layer`, through a `RegularizedModel` into the wrapped model),
    a technique name of a `RegularizedModel`, or an attribute. "conv1.kernel_regularizer.factor",
    "sharpness_aware_minimization.rho" and "loss.lam" are valid paths.
    """
    parts = path.split(".")
    if len(parts) < 2:
        raise ValueError(f"`path` must name an owner and an attribute, e.g. 'conv1.kernel_regularizer.factor'. Got {path!r}")
    owner = model
    for part in parts[:-1]:
        owner = _step(owner, part, path)
    if not hasattr(owner, parts[-1]):
        raise ValueError(f"{type(owner).__name__} has no attribute {parts[-1]!r} (path {path!r}).")
    return owner, parts[-1]


def _step(owner, part, path):
    for candidate in (owner, getattr(owner, "model", None)):
        if isinstance(candidate, keras.Model):
            try:
                return candidate.get_layer(part)
            except ValueError:
                pass
    for t in getattr(owner, "techniques", ()):
        if t.name == part:
            return t
    if hasattr(owner, part):
        return getattr(owner, part)
    raise ValueError(f"Cannot resolve {part!r} of path {path!r} from {type(owner).__name__}.")


@technique("Regularization-strength schedule", paper="", year=None, kind="callback")
class RegularizationSchedule(keras.callbacks.Callback):
    """Sets a regularization coefficient from a schedule during `fit` (warm-up, decay, annealing).

        attribute(t) = schedule(t),   t = epoch (per="epoch") or the optimizer's step counter (per="batch")

    The coefficient is addressed by a dotted `path` from the model (see `resolve_attribute`). A coefficient held in
    a `keras.Variable` is assigned in place (no retrace: the traced step reads the variable, so per-batch schedules
    cost one assignment); a Python number is baked into the traced step, so the callback rebuilds the train function
    when the value changes (cheap once per epoch; per-batch schedules need a variable, or `variables_only=True` to
    refuse numbers). Per batch, t is `optimizer.iterations`, so a fit resumed from a saved model continues the
    schedule where it stopped.

    This is the one "assign a scheduled value to an attribute" mechanism of keras_reg: `VariableSchedule` is this
    class with per="batch" and variables only, and callbacks that drive several attributes at once (e.g.
    `keras_reg.training.CompanionDecay`) subclass it and override `targets()`.

    Args:
        path: where the coefficient lives, e.g. "conv1.kernel_regularizer.factor".
        schedule: a callable t -> value (e.g. `WarmupDecay`), or a list of values indexed by t (last one kept).
        per: "epoch" or "batch".
        verbose: print each change of a Python-number attribute.
        variables_only: raise ValueError when the target is not a `keras.Variable` (never retrace).

    Example:
        >>> ramp = keras_reg.callbacks.WarmupDecay(peak=0.01, warmup=5)
        >>> cb = keras_reg.callbacks.RegularizationSchedule("conv1.kernel_regularizer.factor", ramp)
        >>> model.fit(x, y, epochs=20, callbacks=[cb])
    """

    def __init__(self, path, schedule, per="epoch", verbose=0, variables_only=False):
        super().__init__()
        if path is not None and (not isinstance(path, str) or not path):
            raise ValueError(f"`path` must be a dotted attribute path string. Received: path={path!r}")
        if per not in ("epoch", "batch"):
            raise ValueError(f"`per` must be 'epoch' or 'batch'. Received: per={per!r}")
        if not (callable(schedule) or isinstance(schedule, (list, tuple))):
            raise ValueError("`schedule` must be a callable t -> value or a list of values.")
        if isinstance(schedule, (list, tuple)) and not schedule:
            raise ValueError("`schedule` must not be an empty list.")
        self.path, self.schedule, self.per, self.verbose = path, schedule, per, verbose
        self.variables_only = bool(variables_only)

    def value_at(self, t):
        if isinstance(self.schedule, (list, tuple)):
            value = self.schedule[min(t, len(self.schedule) - 1)]
        else:
            value = self.schedule(t)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"The schedule for {self.path!r} produced a non-finite value {value} at t={t}.")
        return value

    def targets(self):
        """The (owner, attribute name) pairs the schedule sets (override to drive several attributes)."""
        return [resolve_attribute(self.model, self.path)]

    def _apply(self, t):
        value = self.value_at(t)
        retrace = False
        for owner, name in self.targets():
            current = getattr(owner, name)
            if isinstance(current, keras.Variable):
                current.assign(value)
                continue
            if self.variables_only:
                raise ValueError(
                    f"{self.path or name!r} is a {type(current).__name__}, not a keras.Variable; this schedule "
                    "only assigns variables (use RegularizationSchedule with variables_only=False for numbers)."
                )
            if current == value:
                continue
            setattr(owner, name, value)
            retrace = True
            if self.verbose:
                print(f"{type(self).__name__}: {self.path or name} = {value:g}")
        if retrace:
            self.model.make_train_function(force=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._apply(epoch)

    def on_train_begin(self, logs=None):
        self._batches_seen = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "batch":
            # The optimizer's counter survives save/load (a resumed fit continues the schedule); a model driven
            # without an optimizer (a hand-written loop calling the callback) falls back to the batches seen here.
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                step = int(keras.ops.convert_to_numpy(optimizer.iterations))
            else:
                step = getattr(self, "_batches_seen", 0)
                self._batches_seen = step + 1
            self._apply(step)

    def get_config(self):
        schedule = self.schedule
        if hasattr(schedule, "get_config"):
            schedule = keras.saving.serialize_keras_object(schedule)
        config = {"path": self.path, "schedule": schedule, "per": self.per, "verbose": self.verbose}
        if self.variables_only:
            config["variables_only"] = True
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

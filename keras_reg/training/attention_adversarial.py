"""Adversarial training on attention scores (Attention AT and iAT)."""

import keras
import tensorflow as tf
from keras import ops

from keras_reg.catalogue import technique
from keras_reg.functional.attention_perturbation import at_perturbation
from keras_reg.functional.attention_perturbation import iat_perturbation
from keras_reg.layers.attention_perturbation import attention_perturbation_scope
from keras_reg.training.technique import per_sample_loss
from keras_reg.training.technique import StepTechnique
from keras_reg.utils.validation import check_non_negative
from keras_reg.utils.validation import check_positive

_PAPER = "Attention Meets Perturbations: Robust and Interpretable Attention with Adversarial Training"
VARIANTS = ("at", "iat")


def _weighted_mean(per_sample, sample_weight):
    """Keras' default reduction: sum_i w_i l_i / B."""
    per_sample = ops.cast(per_sample, "float32")
    per_sample = ops.mean(ops.reshape(per_sample, (ops.shape(per_sample)[0], -1)), axis=-1)
    if sample_weight is not None:
        per_sample = per_sample * ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(per_sample))
    return ops.mean(per_sample)


@technique("AT / iAT (attention)", paper=_PAPER, year=2021, kind="train_step")
class AttentionAdversarialTraining(StepTechnique):
    """Adversarial training on the attention scores: Attention AT and the more interpretable Attention iAT.

        g = dL/da at the clean scores a of the designated attention layer(s)        (stop-gradient)
        AT:  r_i = epsilon g_i / ||g_i||
        iAT: r_i = epsilon r~_i / ||r~_i||,  r~_i = sum_k <g_i, d_ik> d_ik,  d_ik = (a_i - a_k) / ||a_i - a_k||
        L <- L(a) + lam * L(a + r)

    From Kitada & Iyatomi, "Attention Meets Perturbations: Robust and Interpretable Attention with Adversarial
    Training" (IEEE Access, 2021). The scores are the logits before the (masked) softmax, exposed by
    `keras_reg.layers.AttentionScorePerturbation` or `keras_reg.layers.PerturbableMultiHeadAttention`; the
    perturbation is normalized per sample over all of the layer's scores (the authors' `F.normalize` over the
    sequence). iAT restricts the direction to the span of the differences between the samples' attentions in the
    batch (Sato et al.'s interpretable perturbation, which the paper adapts): r~_i = sum_k alpha_ik d_ik with alpha
    along its loss gradient, <g_i, d_ik>; it is rescaled to norm epsilon, as the authors' code does. The authors'
    released iAT layer differs from this: its gradient is taken at the perturbation itself, so it reduces to
    -epsilon g / ||g|| (a descent direction); we follow the paper. As we read their code, the first pass's
    backward also leaves its weight gradient in place for AllenNLP's step to add to; we train on L + lam L_adv.

    Cost per step: two extra forward passes (stateless: BatchNorm statistics move in the main pass only), one at
    the clean scores with a backward pass to the scores alone (for g), one at the perturbed scores, whose backward
    is part of the step's. Reports `attention_adversarial_loss` = L(a + r).

    Args:
        epsilon: norm of the perturbation per sample, > 0 (the authors' `xi`).
        lam: weight of the adversarial loss, >= 0 (the authors' `lam_adv`, default 1).
        variant: "at" or "iat".
        layers: name or list of names of the hook layers to perturb (default: every hook layer in the model).
        loss: the loss of the adversarial term: the name of a Keras loss function, a `keras.losses.Loss` or a
            callable (y_true, y_pred) -> per-sample losses (sample weights apply as in Keras). Use the model's
            training loss: e.g. for a network that outputs logits, `from_logits=True` or
            `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
        from_logits: with a loss given by name, whether the model outputs logits (default False: probabilities).

    Example:
        >>> at = keras_reg.training.AttentionAdversarialTraining(epsilon=1.0, variant="iat")
        >>> model = keras_reg.training.RegularizedModel(net_with_perturbable_attention, [at])
        >>> model.compile("adam", "sparse_categorical_crossentropy"); model.fit(x, y)
    """

    metric_names = ("attention_adversarial_loss",)
    extra_passes = 2

    def __init__(self, epsilon=1.0, lam=1.0, variant="at", layers=None, loss="sparse_categorical_crossentropy",
                 from_logits=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_positive(epsilon, "epsilon")
        self.lam = check_non_negative(lam, "lam")
        if variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}. Received: variant={variant!r}")
        self.variant = variant
        if layers is not None and not isinstance(layers, str) and not (
            isinstance(layers, (list, tuple)) and layers and all(isinstance(n, str) for n in layers)
        ):
            raise ValueError(f"`layers` must be None, a layer name or a list of layer names. Received: layers={layers!r}")
        self.layers = layers if layers is None or isinstance(layers, str) else list(layers)
        self.from_logits = bool(from_logits)
        self.loss_fn, self.loss = per_sample_loss(loss, self.from_logits, "AttentionAdversarialTraining")
        self._names = None

    def attach(self, model):
        hooks = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                 if getattr(layer, "perturbs_attention_scores", False)]
        names = {layer.name for layer in hooks}
        if not hooks:
            raise ValueError("AttentionAdversarialTraining needs a model with a `keras_reg.layers."
                             "AttentionScorePerturbation` or `PerturbableMultiHeadAttention` layer.")
        wanted = None if self.layers is None else ([self.layers] if isinstance(self.layers, str) else self.layers)
        if wanted is not None:
            missing = [n for n in wanted if n not in names]
            if missing:
                raise ValueError(f"`layers`: no attention hook layer named {missing}; the model has {sorted(names)}.")
            names = set(wanted)
        self._names = frozenset(names)

    def _selected(self, layer):
        return self._names is None or layer.name in self._names

    def transform_loss(self, loss, context):
        sample_weight = context.sample_weight
        probes, scores = [], []

        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def record(layer, a):
                if not self._selected(layer):
                    return a
                probe = tf.zeros_like(a)
                tape.watch(probe)
                probes.append(probe)
                scores.append(a)
                return a + probe

            with attention_perturbation_scope(record):
                clean = context.forward(context.x)
            clean_loss = _weighted_mean(self.loss_fn(context.labels, clean), sample_weight)
        if not probes:
            raise ValueError("AttentionAdversarialTraining: the forward pass did not reach a selected attention hook.")
        grads = tape.gradient(clean_loss, probes)
        perturbations = []
        for a, g in zip(scores, grads):
            g = ops.zeros_like(a) if g is None else g
            if self.variant == "at":
                r = at_perturbation(g, self.epsilon)
            else:
                r = iat_perturbation(ops.stop_gradient(a), g, self.epsilon)
            perturbations.append(ops.stop_gradient(r))
        queue = list(perturbations)

        def perturb(layer, a):
            if not self._selected(layer):
                return a
            return a + ops.cast(queue.pop(0), a.dtype)

        with attention_perturbation_scope(perturb):
            adversarial = context.forward(context.x)
        adversarial_loss = _weighted_mean(self.loss_fn(context.labels, adversarial), sample_weight)
        loss = loss + ops.cast(context.scale(self.lam * adversarial_loss), loss.dtype)
        return loss, {"attention_adversarial_loss": adversarial_loss}

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "lam": self.lam, "variant": self.variant,
                "layers": self.layers,
                "loss": self.loss if isinstance(self.loss, str) else keras.saving.serialize_keras_object(self.loss),
                "from_logits": self.from_logits}

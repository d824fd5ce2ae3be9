"""Sweep group: weight constraints (`keras_reg.constraints`) on the sweep network's kernels."""

import numpy as np

from benchmarks import sweep_regularizers  # noqa: F401  (defines reg_filter_norm_error, used below)
from benchmarks.metrics import metric
from benchmarks.registry import _obj
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group

CONV_INPUT = {"conv0": 28, "conv1": 14}  # each conv layer's input size in sweep_cnn (28x28 images, 2x2 pooling)


def _dense(path, **kwargs):
    return lambda name: {"kernel_constraint": _obj(path)(**kwargs)} if name == "hidden" else {}


def _all_kernels(make, bias=False):
    """Hooks putting `make()` on the kernel (and with `bias` the bias) of every conv and Dense layer."""
    def kwargs():
        out = {"kernel_constraint": make()}
        if bias:
            out["bias_constraint"] = make()
        return out

    return {"conv": lambda i: kwargs(), "dense": lambda name: kwargs()}


@metric("cons_conv_operator_norm", "largest singular value over the conv layers of their circular convolution "
        "operator on the layer's input size (28 and 14)", higher=False)
def _conv_operator_norm(r):
    sv = _obj("keras_reg.functional.circular_conv_singular_values")
    return float(max(np.max(sv(np.asarray(r.net.get_layer(name).kernel), size)) for name, size in CONV_INPUT.items()))


@metric("cons_class_norm_spread", "max / min L2 norm of the class vectors (columns) of the logits kernel: 1 when "
        "all classes lie on one sphere", higher=False)
def _class_norm_spread(r):
    norms = np.linalg.norm(np.asarray(r.net.get_layer("logits").kernel, "float64"), axis=0)
    return float(norms.max() / norms.min())


group("sweep_constraints", "A weight constraint keeps the accuracy and enforces its property on the constrained kernel.",
      entries=(
          entry("Spectral-norm clipping (matrix)", "spectral-norm clip 1.0 (hidden)",
                dense=_dense("keras_reg.constraints.SpectralNormClip", max_norm=1.0),
                claims=(better("hidden_spectral_norm", "the hidden kernel's spectral norm is lower"),)),
          # the polar factor of the hidden kernel after every step (Anil et al. orthonormalise Dense layers)
          entry("Björck orthonormalization", "Björck 15 iterations (hidden)",
                dense=_dense("keras_reg.constraints.BjorckOrthonormalization", iterations=15),
                claims=(better("hidden_gram_error", "the hidden kernel has orthonormal columns"),)),
          # each conv layer clipped for its own input size: the operator norm depends on it
          entry("Conv operator-norm clipping", "conv operator-norm clip 1.0 (conv)",
                conv=lambda i: {"kernel_constraint": _obj("keras_reg.constraints.ConvOperatorNormClip")(
                    max_norm=1.0, input_size=CONV_INPUT[f"conv{i}"])},
                claims=(better("cons_conv_operator_norm", "the conv layers' operator norm is lower"),)),
          # the class vectors w_c of the classifier (axis 0 of the (64, 10) kernel) on the unit sphere, no bias: the
          # logits are ||h|| cos(h, w_c)
          entry("Hyperspherical embedding", "unit-sphere class vectors (logits, no bias)",
                dense=lambda name: {"kernel_constraint": _obj("keras_reg.constraints.HypersphereConstraint")(
                    radius=1.0, axis=0), "use_bias": False} if name == "logits" else {},
                claims=(better("cons_class_norm_spread", "all class vectors have the same norm"),)),
          entry("Unit-norm filters (Oblique manifold)", "unit-norm filters (conv+hidden)",
                conv=lambda i: {"kernel_constraint": _obj("keras_reg.constraints.UnitNormPerFilter")()},
                dense=_dense("keras_reg.constraints.UnitNormPerFilter"),
                claims=(better("reg_filter_norm_error", "every filter has unit norm"),)),
          # the WGAN critic's clamp c = 0.01 on every weight (kernels and biases), as in the paper
          entry("WGAN weight clipping", "weight clip 0.01 (all layers)",
                **_all_kernels(lambda: _obj("keras_reg.constraints.WeightClip")(0.01), bias=True),
                claims=(better("hidden_spectral_norm", "the hidden kernel's spectral norm (Lipschitz bound) is lower"),)),
      ), metrics=("test_acc", "hidden_spectral_norm", "hidden_gram_error", "cons_conv_operator_norm",
                  "cons_class_norm_spread", "reg_filter_norm_error"),
      note="Constraints are projections after each optimizer step. Spectral-norm clip 1.0 and the conv operator-norm "
           "clip 1.0 (the 1-Lipschitz bound of Gouk et al. / Sedghi et al.; conv norms exact on the 28x28 and 14x14 "
           "inputs); Björck: 15 first-order iterations on the hidden kernel (784x64, orthonormal columns); the "
           "hyperspherical embedding's class vectors on the unit sphere, without the paper's feature normalisation "
           "and novel classes; unit-norm filters (radius 1) on conv0, conv1 and hidden; WGAN's c = 0.01 on every "
           "kernel and bias, as for the paper's critic, here on a classifier trained with Adam.")

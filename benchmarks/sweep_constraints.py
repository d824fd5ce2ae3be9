"""Sweep group: weight constraints (`keras_reg.constraints`) on the sweep network's kernels."""

from benchmarks.registry import _obj
from benchmarks.sweep import better
from benchmarks.sweep import entry
from benchmarks.sweep import group


def _dense(path, **kwargs):
    return lambda name: {"kernel_constraint": _obj(path)(**kwargs)} if name == "hidden" else {}


group("sweep_constraints", "A weight constraint keeps the accuracy and enforces its property on the constrained kernel.",
      entries=(
          entry("Spectral-norm clipping (matrix)", "spectral-norm clip 1.0 (hidden)",
                dense=_dense("keras_reg.constraints.SpectralNormClip", max_norm=1.0),
                claims=(better("hidden_spectral_norm", "the hidden kernel's spectral norm is lower"),)),
      ), metrics=("test_acc", "hidden_spectral_norm"))

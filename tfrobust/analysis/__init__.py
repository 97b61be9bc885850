"""Analysis of adversarial robustness: surfaces, the robustness indicator, spectra, margins, saliency.

* :mod:`~tfrobust.analysis.surface` — decision and loss surfaces in input space
  (random or attack directions) and parameter space (filter-normalised), as arrays.
* :mod:`~tfrobust.analysis.indicator` — the robustness indicator of Yu et al.:
  input-Jacobian norms and sparsity of the decision function, Hessian
  eigenvalues by Lanczos / power iteration on Hessian-vector products.
* :mod:`~tfrobust.analysis.spectra` and :mod:`~tfrobust.analysis.margins` — the
  regularisation view of Wen, Li, Jia: per-layer singular values and sample margins.
* :mod:`~tfrobust.analysis.saliency` — input-gradient maps through tf-keras-vis.
* :mod:`~tfrobust.analysis.plots` — figures (Agg canvas), including
  :func:`~tfrobust.analysis.plots.surface_image` for TensorBoard.
* :mod:`~tfrobust.analysis.linalg` — matrix-free Lanczos and power iteration.

The command-line verbs ``tfrobust surface`` and ``tfrobust indicator`` live in
:mod:`tfrobust.cli.surface` and :mod:`tfrobust.cli.indicator`.
"""

from __future__ import annotations

import importlib

__all__ = [
    "Surface",
    "input_surface",
    "parameter_surface",
    "input_directions",
    "evaluate_plane",
    "evaluate_parameter_plane",
    "attack_trajectory",
    "filter_normalized_directions",
    "robustness_indicator",
    "IndicatorResult",
    "decision_jacobian",
    "jacobian_statistics",
    "hessian_eigenvalues",
    "HessianSpectrum",
    "hessian_vector_product",
    "hessian_operator",
    "lanczos",
    "power_iteration",
    "near_zero_share",
    "weight_spectrum",
    "weight_spectra",
    "layer_jacobian_spectrum",
    "jacobian_spectra",
    "Margins",
    "sample_margins",
    "normalised_margin",
    "saliency_maps",
    "plot_saliency",
    "plot_surface",
    "plot_surface_grid",
    "plot_regularization",
    "plot_indicator_scatter",
    "surface_image",
    "figure_to_png",
]

# Public name -> submodule. Submodules load on first use, so that importing the
# package (e.g. to build the command-line parser) does not import TensorFlow.
_HOME = {
    **dict.fromkeys(["Surface", "input_surface", "parameter_surface", "input_directions", "evaluate_plane",
                     "evaluate_parameter_plane", "attack_trajectory", "filter_normalized_directions"], "surface"),
    **dict.fromkeys(["robustness_indicator", "IndicatorResult", "decision_jacobian", "jacobian_statistics",
                     "hessian_eigenvalues", "HessianSpectrum"], "indicator"),
    **dict.fromkeys(["hessian_vector_product", "hessian_operator", "lanczos", "power_iteration",
                     "near_zero_share"], "linalg"),
    **dict.fromkeys(["weight_spectrum", "weight_spectra", "layer_jacobian_spectrum", "jacobian_spectra"],
                    "spectra"),
    **dict.fromkeys(["Margins", "sample_margins", "normalised_margin"], "margins"),
    **dict.fromkeys(["saliency_maps", "plot_saliency"], "saliency"),
    **dict.fromkeys(["plot_surface", "plot_surface_grid", "plot_regularization", "plot_indicator_scatter",
                     "surface_image", "figure_to_png"], "plots"),
}


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

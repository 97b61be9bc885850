"""Figures for surfaces, the regularisation view and the indicator, with Matplotlib's Agg canvas.

Every function returns a ``matplotlib.figure.Figure`` drawn on an Agg canvas
(never pyplot, so no GUI backend is touched); save it with
``fig.savefig(path)`` or turn it into pixels with :func:`figure_to_rgba`.
Colours of the decision function: blue where ``d > 0`` (correct), red where
``d < 0`` (misclassified); the decision boundary ``d = 0`` is a thick black
line, the threat ball a dashed green line, the attack trajectory orange.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tfrobust.analysis.surface import Surface

__all__ = [
    "new_figure",
    "figure_to_rgba",
    "figure_to_png",
    "plot_surface",
    "plot_surface_grid",
    "plot_regularization",
    "plot_indicator_scatter",
    "surface_image",
]

_DIRECTION_NAMES = {"random": "random direction", "ce": "CE attack direction",
                    "ll": "least-likely (targeted CE) direction", "cw": "C&W margin direction"}


def new_figure(width: float, height: float, dpi: int = 100):
    """A Figure on an Agg canvas (independent of the pyplot backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgba(fig) -> np.ndarray:
    """Renders a figure to a ``uint8`` array ``[H, W, 4]``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba(), dtype=np.uint8).copy()


def figure_to_png(fig, dpi: int | None = None) -> bytes:
    """Renders a figure to PNG bytes (e.g. for ``IPython.display.Image``)."""
    import io  # pylint: disable=import-outside-toplevel

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _axis_labels(surface: Surface) -> tuple[str, str]:
    if surface.space == "parameter":
        return "a (filter-normalised random δ₁)", "b (filter-normalised random δ₂)"
    unit = "L∞" if surface.norm == "linf" else "L2"
    return (f"a: {_DIRECTION_NAMES.get(surface.direction, surface.direction)} ({unit})",
            f"b: random direction ({unit})")


def _decision_norm(values: np.ndarray, limit: float | None = None):
    from matplotlib.colors import TwoSlopeNorm  # pylint: disable=import-outside-toplevel

    lo, hi = float(np.min(values)), float(np.max(values))
    if limit is not None:
        lo, hi = -limit, limit
    lo = min(lo, -1e-6)
    hi = max(hi, 1e-6)
    return TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)


def _overlay(ax, surface: Surface, *, legend: bool = True, boundary: bool = True) -> None:
    """Boundary, eps-ball, trajectory and origin on a 2-D axes."""
    from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

    aa, bb = np.meshgrid(surface.alphas, surface.betas)
    handles = []
    if boundary and np.min(surface.decision) < 0 < np.max(surface.decision):
        ax.contour(aa, bb, surface.decision, levels=[0.0], colors="k", linewidths=2.2)
        handles.append(Line2D([], [], color="k", lw=2.2, label="decision boundary d = 0"))
    if surface.ball is not None and surface.eps is not None:
        ax.contour(aa, bb, surface.ball, levels=[surface.eps], colors="#1a9850", linewidths=1.8,
                   linestyles="--")
        norm = "L∞" if surface.norm == "linf" else "L2"
        handles.append(Line2D([], [], color="#1a9850", lw=1.8, ls="--",
                              label=f"ε-ball ∩ plane ({norm}, ε = {surface.eps:g})"))
    if surface.trajectory is not None:
        t = np.asarray(surface.trajectory)
        ax.plot(t[:, 0], t[:, 1], "-o", color="#ff7f00", ms=3.5, lw=1.5, mec="k", mew=0.4)
        final_d = None if surface.trajectory_decision is None else surface.trajectory_decision[-1]
        marker = "X" if final_d is not None and final_d < 0 else "P"
        ax.plot(t[-1, 0], t[-1, 1], marker, color="#ff7f00", ms=9, mec="k")
        label = "attack trajectory (BIM, projected)"
        if final_d is not None:
            label += f"; ends at d = {final_d:.2f}"
        handles.append(Line2D([], [], color="#ff7f00", marker="o", ms=4, lw=1.5, label=label))
    ax.plot(0, 0, "*", color="gold", ms=13, mec="k", mew=0.8)
    handles.append(Line2D([], [], color="gold", marker="*", ms=11, mec="k", lw=0,
                          label="input x" if surface.space == "input" else "trained weights θ"))
    ax.set_xlim(surface.alphas[0], surface.alphas[-1])
    ax.set_ylim(surface.betas[0], surface.betas[-1])
    if legend:
        ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.85)


def _plot_3d(ax, surface: Surface, kind: str, zlim=None) -> None:
    aa, bb = np.meshgrid(surface.alphas, surface.betas)
    values = getattr(surface, kind)
    if kind == "decision":
        # Draw in call order: the z = 0 plane, the surface, then the boundary on top of both.
        ax.computed_zorder = False
        ax.plot_surface(aa, bb, np.zeros_like(values), color="grey", alpha=0.18, linewidth=0, zorder=1)
        ax.plot_surface(aa, bb, values, cmap="RdBu", norm=_decision_norm(values, zlim), rstride=1, cstride=1,
                        linewidth=0, antialiased=True, alpha=0.92, zorder=2)
        if surface.space == "input" and np.min(values) < 0 < np.max(values):
            ax.contour(aa, bb, values, levels=[0.0], colors="k", linewidths=2.5, zorder=3)
        ax.set_zlabel("d(x)" if surface.space == "input" else "mean d")
    else:
        ax.plot_surface(aa, bb, values, cmap="viridis", rstride=1, cstride=1, linewidth=0, antialiased=True)
        ax.set_zlabel("cross-entropy" if surface.space == "input" else "mean cross-entropy")
    if zlim is not None:
        ax.set_zlim(-zlim if kind == "decision" else 0.0, zlim)
    ax.plot([0], [0], [surface.value_at(0.0, 0.0, kind)], "*", color="gold", ms=11, mec="k", zorder=10)
    ax.view_init(elev=28, azim=-60)
    from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel

    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("a", fontsize=8)
    ax.set_ylabel("b", fontsize=8)


def _plot_2d(fig, ax, surface: Surface, kind: str, *, legend: bool = True, colorbar: bool = True,
             zlim=None) -> None:
    aa, bb = np.meshgrid(surface.alphas, surface.betas)
    values = getattr(surface, kind)
    if kind == "decision":
        cs = ax.contourf(aa, bb, values, levels=25, cmap="RdBu", norm=_decision_norm(values, zlim))
        label = "d" if surface.space == "input" else "mean d"
    elif kind == "accuracy":
        cs = ax.contourf(aa, bb, values, levels=np.linspace(0.0, 1.0, 21), cmap="magma")
        label = "accuracy"
    else:
        levels = np.linspace(0.0, zlim if zlim is not None else float(np.max(values)), 25)
        cs = ax.contourf(aa, bb, np.minimum(values, levels[-1]), levels=levels, cmap="viridis")
        label = "cross-entropy"
    if colorbar:
        fig.colorbar(cs, ax=ax, shrink=0.85, label=label)
    _overlay(ax, surface, legend=legend, boundary=surface.space == "input")
    xlabel, ylabel = _axis_labels(surface)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def plot_surface(surface: Surface, *, title: str | None = None, fig=None):
    """Four views of one surface.

    Input space: 3-D and 2-D decision function, 3-D and 2-D cross-entropy;
    the 2-D views mark the decision boundary (``d = 0``), the ε-ball's section
    by the plane and the projected attack trajectory. Parameter space: 3-D
    mean decision function and loss, 2-D loss and accuracy.
    """
    fig = fig or new_figure(12.5, 10.5)
    if surface.space == "input":
        panels = [("decision", "3d", "decision function d, 3-D"),
                  ("decision", "2d", "decision function d: boundary, ε-ball, attack"),
                  ("loss", "3d", "cross-entropy loss, 3-D"),
                  ("loss", "2d", "cross-entropy loss (boundary overlaid)")]
    else:
        panels = [("decision", "3d", "mean decision function d, 3-D"),
                  ("loss", "3d", "mean cross-entropy loss, 3-D"),
                  ("loss", "2d", "mean cross-entropy loss"),
                  ("accuracy", "2d", "accuracy")]
    for i, (kind, view, name) in enumerate(panels):
        if view == "3d":
            ax = fig.add_subplot(2, 2, i + 1, projection="3d")
            _plot_3d(ax, surface, kind)
        else:
            ax = fig.add_subplot(2, 2, i + 1)
            _plot_2d(fig, ax, surface, kind, legend=i == 1 or (surface.space == "parameter" and i == 2))
        ax.set_title(name, fontsize=10)
    if title is None:
        title = f"{surface.space}-space surface"
        if surface.space == "input":
            title += f", label {surface.label}, d(x) = {surface.value_at(0.0, 0.0):.2f}"
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def plot_surface_grid(surfaces: Mapping[str, Mapping[str, Surface]], *, kind: str = "decision",
                      view: str = "3d", share_z: bool | None = None, title: str | None = None):
    """A grid of surfaces: one row per outer key (e.g. model), one column per inner key (e.g. direction).

    Args:
        surfaces: ``{row label: {column label: Surface}}``.
        kind: ``"decision"`` or ``"loss"``.
        view: ``"3d"`` or ``"2d"``.
        share_z: one value range for all panels, so that heights compare across rows;
            default: on for 3-D views, off for 2-D ones (whose point is the boundary's shape).
        title: figure title.
    """
    if kind not in ("decision", "loss"):
        raise ValueError(f"kind={kind!r} is not supported; choose 'decision' or 'loss'")
    if view not in ("3d", "2d"):
        raise ValueError(f"view={view!r} is not supported; choose '3d' or '2d'")
    rows = list(surfaces)
    cols = list(dict.fromkeys(c for r in rows for c in surfaces[r]))
    zlim = None
    if share_z is None:
        share_z = view == "3d"
    if share_z:
        every = [getattr(s, kind) for r in rows for s in surfaces[r].values()]
        zlim = max(float(np.max(np.abs(v))) for v in every)
    fig = new_figure(4.3 * len(cols), 3.9 * len(rows))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            s = surfaces[r].get(c)
            if s is None:
                continue
            index = i * len(cols) + j + 1
            if view == "3d":
                ax = fig.add_subplot(len(rows), len(cols), index, projection="3d")
                _plot_3d(ax, s, kind, zlim=zlim)
            else:
                ax = fig.add_subplot(len(rows), len(cols), index)
                _plot_2d(fig, ax, s, kind, legend=(i == 0 and j == 0), colorbar=(j == len(cols) - 1),
                         zlim=zlim)
            ax.set_title(f"{r} — {c}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _hist(ax, data: Mapping[str, np.ndarray], xlabel: str, colors) -> None:
    every = np.concatenate([np.asarray(v).reshape(-1) for v in data.values()])
    lo, hi = np.quantile(every, [0.005, 0.995])
    bins = np.linspace(lo, hi, 40)
    for (name, v), color in zip(data.items(), colors):
        v = np.asarray(v).reshape(-1)
        ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.55, color=color, density=True,
                label=f"{name} (median {np.median(v):.3g})")
    ax.axvline(0.0, color="k", lw=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def plot_regularization(views: Mapping[str, Mapping], *, title: str | None = None):
    """The regularisation view of several models in one figure (Wen, Li, Jia 2020).

    Args:
        views: ``{model name: {"spectra": {layer: singular values}, "margins": Margins}}``.
            Singular values are 1-D (weight operator) or ``[N, k]`` (layer
            Jacobians at data points; the mean over points is drawn with a
            band between the 10 % and 90 % quantiles).
        title: figure title.

    Top row: per-layer singular values, descending, log scale. Bottom row:
    the raw and normalised sample-margin distributions and each layer's
    spectral spread (coefficient of variation).
    """
    from tfrobust.analysis.spectra import spread  # pylint: disable=import-outside-toplevel

    names = list(views)
    colors = ["#2166ac", "#b2182b", "#1b7837", "#762a83", "#e08214"][: len(names)]
    # Layers are matched by position (auto-generated names differ between models).
    per_model = {n: list(views[n].get("spectra", {}).items()) for n in names}
    n_layers = max((len(v) for v in per_model.values()), default=0)
    labels = []
    for j in range(n_layers):
        first = next(per_model[n][j][0] for n in names if j < len(per_model[n]))
        labels.append(f"{j + 1}: {first}")
    ncols = max(n_layers, 3)
    fig = new_figure(3.6 * ncols, 7.4)
    for j in range(n_layers):
        ax = fig.add_subplot(2, ncols, j + 1)
        for name, color in zip(names, colors):
            if j >= len(per_model[name]):
                continue
            values = np.asarray(per_model[name][j][1])
            if values.ndim == 2:
                mean = values.mean(axis=0)
                ax.fill_between(np.arange(1, values.shape[1] + 1), np.quantile(values, 0.1, axis=0),
                                np.quantile(values, 0.9, axis=0), color=color, alpha=0.2)
                ax.plot(np.arange(1, mean.size + 1), mean, "-o", ms=3, color=color, label=name)
            else:
                ax.plot(np.arange(1, values.size + 1), values, "-", color=color, label=name)
        ax.set_yscale("log")
        ax.set_title(f"layer {labels[j]}", fontsize=9)
        ax.set_xlabel("index (descending)", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
    margins = {n: views[n]["margins"] for n in names if views[n].get("margins") is not None}
    if margins:
        _hist(fig.add_subplot(2, ncols, ncols + 1), {n: m.raw for n, m in margins.items()},
              "raw margin d = z_y − max_{i≠y} z_i", colors)
        norm = next(iter(margins.values())).norm
        _hist(fig.add_subplot(2, ncols, ncols + 2), {n: m.normalised for n, m in margins.items()},
              f"normalised margin d / ‖∇d‖_{'1' if norm == 'linf' else '2'} (input units)", colors)
    ax = fig.add_subplot(2, ncols, ncols + 3)
    width = 0.8 / max(len(names), 1)
    for i, (name, color) in enumerate(zip(names, colors)):
        cv = [spread(per_model[name][j][1])["cv"] if j < len(per_model[name]) else np.nan
              for j in range(n_layers)]
        ax.bar(np.arange(n_layers) + i * width, cv, width=width, color=color, label=name)
    ax.set_xticks(np.arange(n_layers) + width * (len(names) - 1) / 2)
    ax.set_xticklabels([str(j + 1) for j in range(n_layers)], fontsize=7)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("spread (std / mean of σ)", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.suptitle(title or "regularisation view: layer spectra and sample margins", fontsize=12)
    fig.tight_layout()
    return fig


def plot_indicator_scatter(points: Sequence[Mapping], *, x_key: str, y_key: str, xlabel: str, ylabel: str,
                           ax=None, title: str | None = None, logx: bool = True):
    """Scatter of one indicator against robust accuracy, one labelled point per model.

    Args:
        points: dicts with ``name``, ``x_key`` and ``y_key`` (and optionally a ``color``).
        x_key: key of the indicator value.
        y_key: key of the robust accuracy.
        xlabel: x-axis label.
        ylabel: y-axis label.
        ax: axes to draw on; a new figure if ``None``.
        title: axes title.
        logx: logarithmic x axis.

    Returns:
        The figure.
    """
    fig = None
    if ax is None:
        fig = new_figure(5.0, 4.0)
        ax = fig.add_subplot(1, 1, 1)
    xs = [p[x_key] for p in points]
    ys = [p[y_key] for p in points]
    ax.scatter(xs, ys, s=34, c=[p.get("color", "#2166ac") for p in points], edgecolors="k", zorder=3)
    for p, xv, yv in zip(points, xs, ys):
        ax.annotate(p["name"], (xv, yv), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
    if logx and min(xs) > 0:
        from matplotlib.ticker import NullFormatter  # pylint: disable=import-outside-toplevel

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.2, y=0.12)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig if fig is not None else ax.figure


def surface_image(model, x, y=None, *, direction: str = "ce", eps: float = 0.3, steps: int = 25,
                  norm: str = "linf", seed: int = 0, dpi: int = 72, title: str | None = None) -> np.ndarray:
    """A decision-surface picture of one input for ``tf.summary.image``: ``uint8 [1, H, W, 4]``.

    Evaluates the input-space surface of the first example of ``x`` (a
    ``steps x steps`` grid, one forward pass) and draws the 3-D decision
    surface beside its 2-D contour with the boundary, the ε-ball and the
    attack trajectory.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: inputs; the first one is used.
        y: labels (the first is used) or ``None`` for the prediction.
        direction: kind of ``u`` (see :data:`tfrobust.analysis.surface.DIRECTIONS`).
        eps: threat radius (the grid spans ``±2 eps``).
        steps: grid points per axis.
        norm: threat norm.
        seed: seed of the random direction.
        dpi: resolution.
        title: figure title.

    Returns:
        RGBA pixels with a leading batch axis, ready for ``tf.summary.image(name, image, step)``.
    """
    from tfrobust.analysis.surface import input_surface  # pylint: disable=import-outside-toplevel

    x = np.asarray(x)[:1]
    y = None if y is None else np.asarray(y).reshape(-1)[:1]
    surf = input_surface(model, x, y, direction=direction, eps=eps, steps=steps, norm=norm, seed=seed,
                         attack_steps=5)
    fig = new_figure(9.0, 4.0, dpi=dpi)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    _plot_3d(ax, surf, "decision")
    ax = fig.add_subplot(1, 2, 2)
    _plot_2d(fig, ax, surf, "decision", legend=True)
    fig.suptitle(title or f"decision surface, label {surf.label}, d(x) = {surf.value_at(0, 0):.2f}",
                 fontsize=10)
    fig.tight_layout()
    return figure_to_rgba(fig)[None]

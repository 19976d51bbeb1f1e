"""Figures for the lessons, as PNG files: image grids, learning curves, the 2-D latent manifold.

Uses matplotlib's object-oriented API on the Agg canvas (``matplotlib.figure.Figure``), never
``pyplot``: no window, no global backend switch, no state shared between figures, so it runs
on headless machines and inside tests.  Every function writes one PNG and returns its path
(parent folders are created).

Public API
----------
tile_images(images, nrow=None, shape=(28, 28), pad=1) -> 2-D array     the mosaic itself
image_grid(images, path, nrow=None, shape=(28, 28), title=None)        (N, 784) images as a grid
learning_curves(runs, path, keys=("train_loss", "valid_nelbo"), ...)  NELBO per epoch
latent_grid(n=20, lo=0.05, hi=0.95) -> (n*n, 2)                        z on the inverse normal CDF
latent_manifold(decode, path, n=20, shape=(28, 28), title=None)        decoded grid (Kingma & Welling fig. 4)
latent_scatter(z, labels, path, title=None)                            encoded points colored by digit
line_plot(x, series, path, xlabel, ylabel, title=None, logx=False, logy=False, bands=None)
histograms(samples, path, xlabel, title=None, bins=60)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import ndtri

from .backend import to_numpy

__all__ = ["tile_images", "image_grid", "learning_curves", "latent_grid", "latent_manifold",
           "latent_scatter", "line_plot", "histograms"]


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def tile_images(images, nrow=None, shape=(28, 28), pad=1, pad_value=0.15):
    """Arrange (N, H*W) images into one 2-D mosaic, row-major, ``nrow`` images per row.

    nrow defaults to ceil(sqrt(N)).  Empty cells and the ``pad`` pixels between images take
    ``pad_value``.  Returns a float array of shape (rows*(H+pad)-pad, nrow*(W+pad)-pad).
    """
    x = np.asarray(to_numpy(images), dtype=np.float64)
    H, W = shape
    if x.ndim != 2 or x.shape[1] != H * W:
        raise ValueError(f"expected images of shape (N, {H * W}), got {x.shape}")
    n = x.shape[0]
    nrow = int(nrow or np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    out = np.full((rows * (H + pad) - pad, nrow * (W + pad) - pad), pad_value)
    for i in range(n):
        r, c = divmod(i, nrow)
        out[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = x[i].reshape(H, W)
    return out


def image_grid(images, path, nrow=None, shape=(28, 28), title=None, scale=0.3):
    """Save (N, H*W) images (values in [0, 1]) as one grayscale grid, white background."""
    mosaic = tile_images(images, nrow, shape)
    h, w = mosaic.shape
    fig = Figure(figsize=(max(2.0, w * scale / 10), max(2.0, h * scale / 10) + (0.4 if title else 0)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 0.92 if title else 1])
    ax.imshow(1.0 - mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")   # ink is dark
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _read_runs(runs):
    """runs: a list of epoch dicts, a path to metrics.jsonl, or {label: either of those}."""
    if isinstance(runs, dict):
        return {label: _read_runs(r)[""] for label, r in runs.items()}
    if isinstance(runs, (str, Path)):
        with open(runs) as f:
            runs = [json.loads(line) for line in f if line.strip()]
    return {"": list(runs)}


def learning_curves(runs, path, keys=("train_loss", "valid_nelbo"), title="Learning curves",
                    ylabel="NELBO (nats per example)", key_labels=None):
    """Plot ``keys`` of per-epoch records against the epoch; one color per run, one style per key.

    runs: a list of epoch records (``nplvm.train.fit``'s history), a metrics.jsonl path, or a dict
    {label: either}.  key_labels: optional {key: legend text} (default: the key, "_" -> " ")."""
    key_labels = key_labels or {}
    data = _read_runs(runs)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", ":", "-."]
    colors = [f"C{i}" for i in range(10)]
    for r, (label, records) in enumerate(data.items()):
        for s, key in enumerate(keys):
            pts = [(rec["epoch"], rec[key]) for rec in records if rec.get(key) is not None]
            if not pts:
                continue
            ep, val = zip(*pts)
            text = key_labels.get(key, key.replace("_", " "))
            name = text if not label else f"{label}: {text}"
            ax.plot(ep, val, styles[s % 4], color=colors[r % 10], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def latent_grid(n=20, lo=0.05, hi=0.95):
    """(n*n, 2) latent points: a square grid in probability space mapped through the inverse
    standard-normal CDF, z = Phi^-1(u), as in Kingma & Welling (2014), fig. 4.  Row-major with
    z_2 decreasing down the rows and z_1 increasing along them, so it reads like a scatter plot."""
    u = np.linspace(lo, hi, n)
    z1 = ndtri(u)
    z2 = ndtri(u[::-1])
    Z1, Z2 = np.meshgrid(z1, z2)
    return np.stack([Z1.ravel(), Z2.ravel()], axis=1)


def latent_manifold(decode, path, n=20, shape=(28, 28), title="Learned 2-D manifold", lo=0.05, hi=0.95):
    """Decode an n x n grid of 2-D latent points (``latent_grid``) and save the images as a grid.

    decode: a function z (M, 2) -> (M, H*W) Bernoulli means, e.g. ``model.decode``.
    """
    z = latent_grid(n, lo, hi)
    images = np.asarray(to_numpy(decode(z)))
    return image_grid(images, path, nrow=n, shape=shape, title=title)


def latent_scatter(z, labels, path, title="Encoded test set (posterior means)"):
    """Scatter 2-D codes z (N, 2) colored by integer label (a digit), with a legend."""
    z = np.asarray(to_numpy(z), dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"expected z of shape (N, 2), got {z.shape}")
    labels = np.asarray(labels)
    fig = Figure(figsize=(6, 5.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(z[sel, 0], z[sel, 1], s=5, alpha=0.7, color=f"C{int(c) % 10}", label=str(c))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8, loc="best", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def line_plot(x, series, path, xlabel, ylabel, title=None, logx=False, bands=None, hline=None, logy=False):
    """Several curves over one x: series = {label: y}; bands = {label: half-width} shades y +- band;
    hline = (value, label) draws a horizontal reference line."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    x = np.asarray(x)
    for i, (label, y) in enumerate(series.items()):
        y = np.asarray(y, dtype=np.float64)
        ax.plot(x, y, marker="o", ms=3, color=f"C{i % 10}", label=label)
        if bands and label in bands:
            b = np.asarray(bands[label], dtype=np.float64)
            ax.fill_between(x, y - b, y + b, color=f"C{i % 10}", alpha=0.2)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def histograms(samples, path, xlabel, title=None, bins=60, exact=None):
    """Overlaid density histograms of per-draw estimates: samples = {label: 1-D array};
    ``exact`` draws the true value as a vertical line.  The x range is the central 98% of all
    draws (heavy tails would squash the picture); the legend's variances use every draw."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    allv = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in samples.values()])
    lo, hi = np.percentile(allv, [1, 99])
    edges = np.linspace(lo, hi, bins + 1)
    for i, (label, v) in enumerate(samples.items()):
        v = np.asarray(v, dtype=np.float64).ravel()
        ax.hist(v, bins=edges, density=True, alpha=0.5, color=f"C{i % 10}",
                label=f"{label} (var {v.var():.3g})")
    if exact is not None:
        ax.axvline(exact, color="k", ls="--", lw=1, label=f"exact {exact:.3g}")
    ax.set_xlabel(xlabel + " (central 98% of draws)")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

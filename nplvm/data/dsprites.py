r"""dSprites built in NumPy: 2-D shapes from five independent generative factors.

dSprites (Matthey, Higgins, Hassabis & Lerchner, 2017) is a *grid*: every combination of

    factor        values                                   count
    shape         square, ellipse, heart                   3
    scale         linspace(0.5, 1, 6)                      6
    orientation   linspace(0, 2 pi, 40)  (radians)         40
    pos_x         linspace(0, 1, 32)                       32
    pos_y         linspace(0, 1, 32)                       32

rendered as a 64 x 64 binary image: 3 * 6 * 40 * 32 * 32 = 737,280 images.  The data set cannot be
downloaded here, but its definition is public, so this module renders it.  The drawing is ours
(not pixel-identical to DeepMind's files): a shape of scale s has half-width ``HALF_WIDTH * s``
pixels, its centre (the centroid of the filled shape) sits at

    c_x = MARGIN + pos_x * (64 - 2 MARGIN),   c_y = MARGIN + pos_y * (64 - 2 MARGIN)

(column, row; pixel centres at 0.5, 1.5, ...), and it is turned by ``orientation`` counter-clockwise
(as seen with row 0 at the top).  As in the original, orientation 0 and 2 pi are both in the grid
and give the same image, and the square and ellipse repeat themselves within a turn (every pi/2
and pi): the factor is not identifiable from the image for them, which is part of what makes the
disentanglement metrics on dSprites hard.

Nothing is stored: ``DSprites`` holds the factor grid (``factor_values(index)``) and renders the
images you ask for (``images(index)``), so memory stays at what the caller keeps.

    ds = DSprites()
    len(ds)                               # 737280
    idx = ds.sample_index(1000, rng=0)    # uniform over the grid
    x = ds.images(idx)                    # (1000, 4096) uint8 in {0, 1}
    f = ds.factor_values(idx)             # (1000, 5) float64: shape id, scale, orientation, x, y
    ds.index_of(f_classes)                # (..., 5) class indices -> flat grid index
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import rng as make_rng
from ..checks import DataError

__all__ = ["DSprites", "FACTOR_NAMES", "SHAPES", "IMAGE_SIZE", "render"]

IMAGE_SIZE = 64
SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
HALF_WIDTH = 9.0          # pixels, at scale 1
MARGIN = 10.0             # pixels between the image border and the extreme centres

# The heart as an implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 (y up), which spans about
# x in [-1.14, 1.14], y in [-1, 1.25]; _HEART_SHIFT moves its centroid to the origin and
# _HEART_SCALE makes its half-width 1 like the other shapes'.
_HEART_SCALE = 1.14
_HEART_SHIFT = None       # computed once, lazily (the centroid of the curve's interior)


def factor_grid():
    """The values of every factor: a tuple of five 1-D arrays (shape ids as 0, 1, 2)."""
    return (np.arange(3, dtype=np.float64), np.linspace(0.5, 1.0, 6),
            np.linspace(0.0, 2 * math.pi, 40), np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))


def _square_inside(u, v):
    """The square of half-width 1: max(|u|, |v|) <= 1."""
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _ellipse_inside(u, v):
    """The ellipse of half-axes 1 (along u) and 1/2: u^2 + (2 v)^2 <= 1."""
    return u * u + (2.0 * v) ** 2 <= 1.0


def _heart_inside(u, v):
    """u, v: coordinates in heart units (y up, centroid at the origin). Boolean mask."""
    x, y = u * _HEART_SCALE, v * _HEART_SCALE + _heart_shift()
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


def _heart_shift():
    global _HEART_SHIFT
    if _HEART_SHIFT is None:
        t = np.linspace(-1.5, 1.5, 1201)
        X, Y = np.meshgrid(t, t)
        inside = (X * X + Y * Y - 1.0) ** 3 - X * X * Y ** 3 <= 0.0
        _HEART_SHIFT = float(Y[inside].mean())           # centroid height of the curve's interior
    return _HEART_SHIFT


def render(shape, scale, orientation, pos_x, pos_y):
    """Images for arrays of factor values (broadcast to one length B): (B, 64, 64) uint8 {0, 1}.

    shape: integer ids 0 square, 1 ellipse, 2 heart; scale in [0.5, 1]; orientation in radians;
    pos_x, pos_y in [0, 1].  A pixel is on when its centre lies inside the shape.
    """
    shape, scale, orientation, pos_x, pos_y = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (shape, scale, orientation, pos_x, pos_y)))
    span = IMAGE_SIZE - 2 * MARGIN
    cx = (MARGIN + pos_x * span)[:, None, None]                  # (B, 1, 1) column of the centre
    cy = (MARGIN + pos_y * span)[:, None, None]                  # row of the centre
    grid = np.arange(IMAGE_SIZE) + 0.5                           # pixel centres
    dx = grid[None, None, :] - cx                                # (B, 1, 64): to the right
    dy = cy - grid[None, :, None]                                # (B, 64, 1): up (row 0 is the top)
    c, s = np.cos(orientation)[:, None, None], np.sin(orientation)[:, None, None]
    r = (HALF_WIDTH * scale)[:, None, None]
    u = (c * dx + s * dy) / r                                    # rotate by -orientation: shape frame
    v = (-s * dx + c * dy) / r                                   # (B, 64, 64) each
    out = np.zeros(u.shape, dtype=np.uint8)
    for sid, inside in enumerate((_square_inside, _ellipse_inside, _heart_inside)):
        rows = np.flatnonzero(shape == sid)                      # draw each shape only where it is
        if rows.size:
            out[rows] = inside(u[rows], v[rows])
    return out


class DSprites:
    """The dSprites factor grid, rendered on demand.  See the module docstring."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self):
        self.values = factor_grid()
        self._strides = np.cumprod((1,) + FACTOR_SIZES[::-1])[::-1][1:]   # row-major: shape slowest

    def __len__(self):
        return int(np.prod(FACTOR_SIZES))

    def __repr__(self):
        return (f"DSprites({len(self):,} images of 64 x 64: "
                + " x ".join(f"{n} {k}" for n, k in zip(FACTOR_NAMES, FACTOR_SIZES)) + ")")

    def _check_index(self, index):
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise DataError(f"expected integer grid indices, got dtype {index.dtype}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise DataError(f"expected grid indices in [0, {len(self)}), got values in "
                            f"[{index.min()}, {index.max()}]")
        return index

    def factor_classes(self, index):
        """Flat grid indices (...,) -> class index of each factor (..., 5)."""
        index = self._check_index(index)
        return np.stack([(index // st) % n for st, n in zip(self._strides, FACTOR_SIZES)], axis=-1)

    def index_of(self, classes):
        """Class index of each factor (..., 5) -> flat grid index (...,)."""
        classes = np.asarray(classes)
        if classes.shape[-1:] != (5,) or classes.dtype.kind not in "iu":
            raise DataError(f"expected integer factor classes of shape (..., 5), got {classes.dtype} "
                            f"{classes.shape}")
        if np.any(classes < 0) or np.any(classes >= np.asarray(FACTOR_SIZES)):
            raise DataError(f"expected factor classes below {FACTOR_SIZES}")
        return (classes * self._strides).sum(axis=-1)

    def factor_values(self, index):
        """Flat grid indices (N,) -> factor values (N, 5): shape id, scale, orientation, x, y."""
        cls = self.factor_classes(index)
        return np.stack([v[cls[..., j]] for j, v in enumerate(self.values)], axis=-1)

    def images(self, index, flat=True, batch=4096):
        """Render the images of these grid indices: (N, 4096) uint8 (or (N, 64, 64) with flat=False)."""
        index = np.atleast_1d(self._check_index(index))
        out = np.empty((len(index), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for start in range(0, len(index), batch):
            f = self.factor_values(index[start:start + batch])
            out[start:start + batch] = render(*f.T)
        return out.reshape(len(index), -1) if flat else out

    def sample_index(self, n, rng):
        """n grid indices drawn uniformly with replacement."""
        return make_rng(rng).integers(0, len(self), size=int(n))

    def sample_fixed_factor(self, factor, n, rng):
        """n grid indices that share one random value of factor ``factor`` (the other four random):
        the batches of Kim & Mnih's disentanglement metric.  Returns (indices (n,), class value)."""
        g = make_rng(rng)
        classes = np.stack([g.integers(0, k, size=int(n)) for k in FACTOR_SIZES], axis=-1)
        value = int(g.integers(0, FACTOR_SIZES[factor]))
        classes[:, factor] = value
        return self.index_of(classes), value

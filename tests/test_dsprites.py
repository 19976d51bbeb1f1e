"""dSprites rendered in NumPy: the grid, the factors, the drawing; dimension-wise permutation;
the Gaussian TC closed form; Kim & Mnih's metric on codes whose answer is known."""
import math

import numpy as np
import pytest

from nplvm.checks import DataError
from nplvm.disentanglement import (discrete_mutual_info, discretize, gaussian_tc, kim_mnih_metric, mig,
                                   permute_dims)
from nplvm.data.dsprites import FACTOR_SIZES, HALF_WIDTH, MARGIN, DSprites, render

DS = DSprites()


def test_grid_counts_and_factor_ranges():
    assert len(DS) == 3 * 6 * 40 * 32 * 32 == 737280
    idx = np.arange(len(DS))
    cls = DS.factor_classes(idx)
    for j, n in enumerate(FACTOR_SIZES):                        # every class equally often
        assert np.array_equal(np.bincount(cls[:, j]), np.full(n, len(DS) // n))
    np.testing.assert_array_equal(DS.index_of(cls), idx)        # classes <-> flat index
    f = DS.factor_values(idx[::997])
    assert set(np.unique(f[:, 0])) <= {0.0, 1.0, 2.0}
    assert f[:, 1].min() >= 0.5 and f[:, 1].max() <= 1.0
    assert f[:, 2].min() >= 0.0 and f[:, 2].max() <= 2 * math.pi
    assert f[:, 3:].min() >= 0.0 and f[:, 3:].max() <= 1.0
    grid = DS.values
    assert grid[1][0] == 0.5 and grid[1][-1] == 1.0 and grid[2][-1] == pytest.approx(2 * math.pi)


def test_images_are_binary_and_a_full_turn_gives_the_same_image():
    rng = np.random.default_rng(0)
    cls = np.stack([rng.integers(0, n, 50) for n in FACTOR_SIZES], axis=1)
    cls[:, 2] = 0
    turned = cls.copy()
    turned[:, 2] = 39                                           # orientation 2 pi
    a, b = DS.images(DS.index_of(cls)), DS.images(DS.index_of(turned))
    assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1} and a.shape == (50, 4096)
    np.testing.assert_array_equal(a, b)
    quarter = cls.copy()
    quarter[:, 2] = 10                                          # orientation 2 pi * 10 / 39
    assert np.any(DS.images(DS.index_of(quarter)) != a)         # the factor does change the image


def test_shapes_are_centred_where_the_factors_say_and_scale_sets_the_size():
    span = 64 - 2 * MARGIN
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    for shape in range(3):
        for px, py in ((0.0, 0.0), (0.3, 0.8), (1.0, 0.5)):
            im = render(shape, 1.0, 0.7, px, py)[0].astype(float)
            cx, cy = MARGIN + px * span, MARGIN + py * span
            # centroid of the lit pixels within half a pixel of the stated centre
            assert (im * cols).sum() / im.sum() == pytest.approx(cx, abs=0.5)
            assert (im * rows).sum() / im.sum() == pytest.approx(cy, abs=0.5)
    # the square's area is (2 * HALF_WIDTH * scale)^2 up to the pixel boundary
    for s in (0.5, 1.0):
        area = render(0, s, 0.0, 0.5, 0.5).sum()
        assert abs(area - (2 * HALF_WIDTH * s) ** 2) <= 4 * 2 * HALF_WIDTH * s
    assert render(1, 1.0, 0.0, 0.5, 0.5).sum() < render(0, 1.0, 0.0, 0.5, 0.5).sum()


def test_bad_indices_are_clear_errors():
    with pytest.raises(DataError, match="grid indices"):
        DS.images([len(DS)])
    with pytest.raises(DataError, match="integer"):
        DS.images([0.5])
    with pytest.raises(DataError, match=r"\(\.\.\., 5\)"):
        DS.index_of(np.zeros((2, 4), dtype=int))


def test_permute_dims_keeps_every_marginal_and_breaks_the_dependence():
    rng = np.random.default_rng(1)
    n = 4000
    a = rng.standard_normal(n)
    z = np.stack([a, a + 0.1 * rng.standard_normal(n), rng.exponential(size=n)], axis=1)
    zp = permute_dims(z, 2)
    for j in range(3):                                          # each column: the same multiset
        np.testing.assert_array_equal(np.sort(zp[:, j]), np.sort(z[:, j]))
    assert np.corrcoef(z[:, 0], z[:, 1])[0, 1] > 0.99
    assert abs(np.corrcoef(zp[:, 0], zp[:, 1])[0, 1]) < 4 / math.sqrt(n)   # 4 SE of a null correlation
    # the classic bug -- shuffling inside each row -- would mix the marginals of columns 0 and 2
    wrong = np.take_along_axis(z, np.argsort(rng.random(z.shape), axis=1), axis=1)
    assert not np.array_equal(np.sort(wrong[:, 2]), np.sort(z[:, 2]))


def test_gaussian_tc_closed_form():
    assert gaussian_tc(np.diag([1.0, 4.0, 9.0])) == pytest.approx(0.0, abs=1e-15)
    rho = 0.6
    assert gaussian_tc([[2.0, rho * 2.0], [rho * 2.0, 2.0]]) == pytest.approx(-0.5 * math.log(1 - rho ** 2))
    # against sum_j H(z_j) - H(z) computed from the entropies directly
    A = np.random.default_rng(3).standard_normal((4, 4))
    S = A @ A.T + 0.5 * np.eye(4)
    H = lambda c: 0.5 * np.linalg.slogdet(2 * math.pi * math.e * np.atleast_2d(c))[1]
    assert gaussian_tc(S) == pytest.approx(sum(H(S[j, j]) for j in range(4)) - H(S), rel=1e-12)


def test_kim_mnih_metric_is_one_for_the_factors_and_lower_for_a_rotation():
    scale = np.array([0.8, 0.17, 1.8, 0.3, 0.3])                # roughly unit variance per factor
    oracle = lambda i: DS.factor_values(i) / scale
    acc, info = kim_mnih_metric(oracle, DS, 0, n_train=150, n_test=150)
    assert acc == 1.0 and info["active"].all()
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))[0]
    acc_mixed, _ = kim_mnih_metric(lambda i: oracle(i) @ Q, DS, 0, n_train=150, n_test=150)
    assert acc_mixed < 0.9
    # a collapsed dimension (zero variance) never wins a vote
    padded = lambda i: np.concatenate([oracle(i), np.zeros((len(i), 1))], axis=1)
    acc_p, info_p = kim_mnih_metric(padded, DS, 0, n_train=100, n_test=100)
    assert acc_p == 1.0 and not info_p["active"][-1] and info_p["votes"][-1].sum() == 0


def test_kim_mnih_metric_on_rendered_images_finds_position_and_scale():
    """The metric's pipeline end to end on pixels: a code read off the rendered images (centroid
    x, centroid y, area) must get every vote with pos_x / pos_y fixed on its own centroid dimension,
    and the scale votes on the area -- so the batches with a factor fixed render that factor fixed."""
    rows, cols = np.mgrid[0:64, 0:64]

    def moments(i):
        im = DS.images(i, flat=False).reshape(len(i), 64, 64).astype(np.float64)
        area = im.sum(axis=(1, 2))
        return np.stack([(im * cols).sum(axis=(1, 2)) / area, (im * rows).sum(axis=(1, 2)) / area,
                         area], axis=1)

    acc, info = kim_mnih_metric(moments, DS, 0, n_train=150, n_test=150, n_scale=2000)
    votes = info["votes"]                                        # (dimension, factor)
    shape, scale, orientation, pos_x, pos_y = range(5)
    assert votes[:, pos_x].sum() > 0 and votes[0, pos_x] == votes[:, pos_x].sum()
    assert votes[:, pos_y].sum() > 0 and votes[1, pos_y] == votes[:, pos_y].sum()
    assert votes[2, scale] > 0.8 * votes[:, scale].sum()
    # shape and orientation have no dimension of their own, so about 3/5 of the held-out votes can
    # be right (0.54 here); a sampler that did not fix the factor would scatter x and y (~0.2-0.3)
    assert acc >= 0.45


def test_discrete_mutual_info_against_the_entropies():
    g = np.random.default_rng(5)
    a = g.integers(0, 4, size=3000)
    b = (a + (g.random(3000) < 0.3) * g.integers(0, 3, size=3000)) % 5      # b depends on a
    H = lambda *cols: -sum(p * math.log(p) for p in
                           np.unique(np.stack(cols, 1), axis=0, return_counts=True)[1] / 3000)
    assert discrete_mutual_info(a, b) == pytest.approx(H(a) + H(b) - H(a, b), rel=1e-12)
    assert discrete_mutual_info(a, a) == pytest.approx(H(a), rel=1e-12)
    assert discrete_mutual_info(a, np.zeros_like(a)) == 0.0
    with pytest.raises(DataError, match="integer arrays"):
        discrete_mutual_info(a.astype(float), b)


def test_discretize_puts_equal_width_bins_over_each_column():
    z = np.array([[0.0, -1.0], [0.24, 5.0], [0.26, 2.0], [1.0, 1.0]])
    assert discretize(z, 4).tolist() == [[0, 0], [0, 3], [1, 2], [3, 1]]   # edges -1, .5, 2, 3.5, 5
    with pytest.raises(DataError, match="n_bins >= 2"):
        discretize(z, 1)


def test_mig_is_one_for_the_factors_and_near_zero_when_a_factor_is_split_or_missing():
    idx = DS.sample_index(8000, 0)
    cls = DS.factor_classes(idx)
    coarse = cls[:, :3]                                          # shape, scale, orientation // 2: <= 20 values
    coarse[:, 2] //= 2
    noise = np.random.default_rng(1).standard_normal((8000, 2))
    score, info = mig(np.concatenate([coarse + 0.0, noise], axis=1), coarse)
    assert score > 0.99 and info["best_dim"].tolist() == [0, 1, 2]
    assert np.allclose(info["mi"][:3, :3].diagonal(), info["entropy"])   # a bin per value: I = H
    # the factor 'shape' split over two equal copies: no gap for it, the other two still 1
    split, info2 = mig(np.concatenate([coarse + 0.0, coarse[:, :1] + 0.0, noise], axis=1), coarse)
    assert info2["gap"][0] == pytest.approx(0.0, abs=1e-12) and info2["gap"][1:].min() > 0.99
    # codes that know nothing: the plug-in bias only
    none, _ = mig(noise, coarse)
    assert none < 0.01
    with pytest.raises(DataError, match="integer factor classes"):
        mig(noise, coarse[:10])


def test_load_dsprites_splits_without_overlap_and_seeded():
    from nplvm.data import load_dsprites
    ds = load_dsprites(30, 10, 10, seed=1)
    assert ds.train.shape == (30, 4096) and ds.valid.shape == ds.test.shape == (10, 4096)
    assert ds.binary and set(np.unique(ds.train)) <= {0, 1}
    idx = np.concatenate([ds.train_labels, ds.valid_labels, ds.test_labels])
    assert len(np.unique(idx)) == 50                            # drawn without replacement
    np.testing.assert_array_equal(ds.train, DS.images(ds.train_labels))   # labels are grid indices
    np.testing.assert_array_equal(load_dsprites(30, 10, 10, seed=1).train_labels, ds.train_labels)
    with pytest.raises(ValueError, match="n_train"):
        load_dsprites(0)

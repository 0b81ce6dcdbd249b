"""Adapting a model's background prior to the plane it segments (label shift, EM).

A network trained on a painting learns the painting's class frequencies along with its pixels: two
frames painted where a scratch leaves 70 % of the field empty teach "70 % of a field is
background", and a later frame where the cells have closed the scratch (20 % background) comes out
with whole cells missing. How much background a user happened to paint is not a property of the
modality. Saerens, Latinne and Decaestecker (Neural Computation 14, 2002) give the correction:
the posteriors of a classifier trained with priors pi are re-weighted by pi' / pi for the priors
pi' of the new data, and pi' itself is found by expectation-maximisation on the new data's own
posteriors (no labels needed):

    pi'_(s+1) = mean over the plane of  p(c | x) * pi'_s(c) / pi(c)  (renormalised per pixel)

Here the two groups are background (class 0) and the objects (all other classes together, so a
boundary / interior split keeps its proportions). The shift is computed per 2D plane over the whole
plane (after the overlap-tile stitching, so tiled output still equals whole-image output) and is
capped at a factor of :data:`MAX_ODDS_SHIFT` in the background odds, so a plane of pure
background or pure noise cannot drive it without bound.
"""

from __future__ import annotations

import math

import numpy as np

MAX_ODDS_SHIFT = 10.0  # the background odds are changed by at most this factor either way
_TOL = 1e-4
_ITERS = 100


def _ratios(train_bg: float, bg: float) -> tuple[float, float]:
    """Re-weighting factors of the background and of the object classes."""
    return bg / train_bg, (1.0 - bg) / (1.0 - train_bg)


def _reweighted(p: np.ndarray, train_bg: float, bg: float) -> np.ndarray:
    rb, ro = _ratios(train_bg, bg)
    q = np.array(p, dtype=np.float32, copy=True)
    q[0] *= rb
    q[1:] *= ro
    q /= np.maximum(q.sum(axis=0, keepdims=True), np.float32(1e-30))
    return q


def estimate_background_prior(probabilities: np.ndarray, train_background: float) -> float:
    """The background share of a plane, by EM (see the module docstring), capped.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float softmax of shape (K, Y, X) of a model trained where background was
        ``train_background`` of the known pixels.
    train_background : float
        The training prior of background, 0 < train_background < 1.

    Returns
    -------
    float
        The plane's background prior in (0, 1); the training prior itself when the plane is empty
        or the EM cannot move.

    Raises
    ------
    ValueError
        Probabilities that are not (K >= 2, Y, X).
    """
    p = np.asarray(probabilities, np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"probabilities must have shape (classes >= 2, Y, X), got {p.shape}")
    if not 0.0 < train_background < 1.0 or p[0].size == 0:
        return float(train_background)
    odds0 = train_background / (1.0 - train_background)
    lo = odds0 / MAX_ODDS_SHIFT
    hi = odds0 * MAX_ODDS_SHIFT
    bg_lo, bg_hi = lo / (1.0 + lo), hi / (1.0 + hi)
    p0 = p[0].astype(np.float64)
    po = np.clip(1.0 - p0, 0.0, 1.0)
    bg = float(train_background)
    for _ in range(_ITERS):
        rb, ro = _ratios(train_background, bg)
        q0 = rb * p0 / np.maximum(rb * p0 + ro * po, 1e-30)  # re-weighted background posterior
        new = min(max(float(q0.mean()), bg_lo), bg_hi)
        converged = abs(new - bg) < _TOL
        bg = new
        if converged:
            break
    return bg


def adapt_background_prior(probabilities: np.ndarray, train_background: float | None
                           ) -> tuple[np.ndarray, float | None]:
    """Re-weight a plane's probabilities to its own background prior.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float softmax of shape (K, Y, X).
    train_background : float or None
        The background share of the pixels the model was trained on (0 < train_background < 1);
        None (a model that records no training prior, e.g. the shipped ones): nothing changes.

    Returns
    -------
    probabilities : numpy.ndarray
        Float (K, Y, X), re-weighted by pi' / pi and renormalised per pixel (the input itself when
        nothing changes; it is never modified).
    prior : float or None
        The plane's estimated background prior (None when ``train_background`` is None).
    """
    if train_background is None:
        return np.asarray(probabilities), None
    bg = estimate_background_prior(probabilities, float(train_background))
    if math.isclose(bg, train_background, rel_tol=0.0, abs_tol=1e-9):
        return np.asarray(probabilities), bg
    return _reweighted(np.asarray(probabilities), float(train_background), bg), bg

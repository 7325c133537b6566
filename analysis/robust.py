"""Cluster-robust (CR2) covariance of a least-squares fit and Bell-McCaffrey degrees of freedom.

A sweep's rows are capacities x seeds. Their noise need not be constant over capacity, and the seeds
of one capacity share whatever that capacity's point does not fit. The intervals therefore take the
capacities as clusters and use the bias-reduced linearisation of Bell & McCaffrey (2002), CR2
(``HC2`` when every capacity has one row), with their Satterthwaite degrees of freedom for each
contrast (Imbens & Kolesar 2016; Pustejovsky & Tipton 2018's working model Phi = I in the whitened
space). With 6-8 capacities those degrees of freedom are often 2-4, not n - p: that, not the
variance alone, is what keeps a nominal 95% interval near 95% when the noise grows with capacity.

Every row of a cluster shares the capacity, so after whitening by sqrt(w) a cluster's design is
rank one, X_s = a_s x_s' (a_s: the rows' sqrt weights, x_s: the capacity's design row). Its block of
the hat matrix is then k_s a_s a_s' (k_s = x_s' K x_s, K = (X'WX)^-1) with one eigenvalue
q_s k_s (q_s = |a_s|^2) off 1, and everything below is a closed form in O(n p^2), never an (n, n)
matrix: CR2's adjustment (I - H_ss)^-1/2 scales a_s' e_s by 1 / sqrt(1 - q_s k_s), and the
Bell-McCaffrey matrix G'G (S x S) is diag(d) - W K W', whose two traces need only (p, p) products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import AnalysisError

COV_TYPES = ("CR2", "nonrobust")


@dataclass(frozen=True)
class Clusters:
    """The whitened fit by cluster: each cluster's design row x_s, q_s = sum of its rows' weights,
    k_s = x_s' K x_s, and a_s' e_s (its weighted residual sum)."""

    x: np.ndarray        # (S, p)
    q: np.ndarray        # (S,)
    k: np.ndarray        # (S,)
    ae: np.ndarray       # (S,)
    K: np.ndarray        # (p, p): (X' W X)^-1


def clusters(X, resid, groups, weights=None) -> Clusters:
    """Collapse a least-squares fit (design X (n, p), residuals y - X b, row weights) to its clusters.
    Rows of one group must share their design row (a capacity's rows do)."""
    X = np.asarray(X, dtype=float)
    e = np.asarray(resid, dtype=float)
    w = np.ones(len(e)) if weights is None else np.asarray(weights, dtype=float)
    _, first, inv = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    inv = inv.ravel()
    x = X[first]
    if not np.allclose(X, x[inv], rtol=1e-12, atol=0):
        raise AnalysisError("cluster-robust errors: the rows of a cluster must share their design row")
    S = len(first)
    q = np.bincount(inv, weights=w, minlength=S)
    ae = np.bincount(inv, weights=w * e, minlength=S)
    K = np.linalg.inv((X * w[:, None]).T @ X)
    k = np.einsum("sp,pq,sq->s", x, K, x)
    return Clusters(x, q, k, ae, K)


def _adjust(cl: Clusters) -> np.ndarray:
    """1 / (1 - q_s k_s): CR2's squared adjustment of each cluster (a cluster of leverage 1 gets
    none: it has no residual to adjust, and its term is 0 anyway)."""
    lev = cl.q * cl.k
    return np.where(lev < 1 - 1e-12, 1.0 / np.clip(1.0 - lev, 1e-12, None), 1.0)


def cr2_cov(cl: Clusters) -> np.ndarray:
    """The (p, p) CR2 covariance K (sum_s u_s^2 x_s x_s') K, u_s = a_s' e_s / sqrt(1 - q_s k_s)."""
    u2 = cl.ae ** 2 * _adjust(cl)
    meat = (cl.x * u2[:, None]).T @ cl.x
    return cl.K @ meat @ cl.K


def bm_df(cl: Clusters, L) -> np.ndarray:
    """Bell-McCaffrey degrees of freedom of each contrast l (rows of L, (m, p)): (tr M)^2 / tr(M^2)
    with M = G'G = diag(d) - W K W', d_s = c_s^2 q_s, w_s = c_s q_s x_s, c_s = x_s'K l / sqrt(1 - q_s k_s)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    c = (cl.x @ cl.K @ L.T) * np.sqrt(_adjust(cl))[:, None]           # (S, m)
    d = c ** 2 * cl.q[:, None]                                        # (S, m)
    # W'W per contrast: sum_s c_s^2 q_s^2 x_s x_s'  -> (m, p, p); then K W'W
    wtw = np.einsum("sm,s,sp,sq->mpq", c ** 2, cl.q ** 2, cl.x, cl.x)
    kw = np.einsum("pq,mqr->mpr", cl.K, wtw)                           # (m, p, p)
    wkw = c ** 2 * (cl.q ** 2 * cl.k)[:, None]                         # (S, m): w_s' K w_s
    tr = d.sum(0) - np.einsum("mpp->m", kw)
    tr2 = (d ** 2).sum(0) - 2 * (d * wkw).sum(0) + np.einsum("mpq,mqp->m", kw, kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = tr ** 2 / tr2
    return np.where(np.isfinite(df) & (df > 0), df, np.nan)

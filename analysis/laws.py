"""The scaling-law forms: y as a function of capacity C.

- ``log-linear``  y = a + b log10 C          (the paper's law; the default)
- ``linear``      y = a + b C
- ``power``       ln y = a + b ln C          (y = e^a C^b; needs y > 0)
- ``saturating``  y = E + A C^-alpha         (robust Huber fit from a grid of starts, as in
                                              Chinchilla-style fits; not linear in its parameters)

The first three are linear in their parameters: a design matrix ``design(C)`` and a transform of y
(``to_fit_space``) make them an ordinary least-squares problem, solved by statsmodels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.errors import AnalysisError


@dataclass(frozen=True)
class Law:
    """One functional form: its parameter names, prediction and the data it accepts."""

    name: str
    param_names: tuple[str, ...]
    equation: str
    linear: bool                      # linear in its parameters (OLS/WLS on design(C))
    log_x: bool                       # needs C > 0
    log_y: bool                       # fitted on ln y: needs y > 0
    _design: Callable[[np.ndarray], np.ndarray] | None = None
    _predict: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def design(self, C) -> np.ndarray:
        """The (n, p) design matrix of a linear-in-parameters form."""
        if self._design is None:
            raise AnalysisError(f"form {self.name!r} is not linear in its parameters: it has no design matrix")
        return self._design(np.asarray(C, dtype=float))

    def to_fit_space(self, y) -> np.ndarray:
        y = np.asarray(y, dtype=float)
        return np.log(y) if self.log_y else y

    def from_fit_space(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        return np.exp(v) if self.log_y else v

    def predict(self, params, C) -> np.ndarray:
        """y at capacities C for parameters in ``param_names`` order."""
        params = np.asarray(params, dtype=float)
        C = np.asarray(C, dtype=float)
        if self._predict is not None:
            return self._predict(params, C)
        return self.from_fit_space(self.design(C) @ params)

    def check(self, C, y=None, x_name: str = "x", y_name: str = "y") -> None:
        """Raise AnalysisError when the data cannot be fitted with this form."""
        C = np.asarray(C, dtype=float)
        if self.log_x and np.any(C <= 0):
            bad = C[C <= 0][0]
            raise AnalysisError(f"column {x_name!r} has a non-positive value ({bad:g}): form {self.name!r} "
                                "takes the log of the capacity and needs every value > 0")
        if y is not None and self.log_y:
            y = np.asarray(y, dtype=float)
            if np.any(y <= 0):
                bad = y[y <= 0][0]
                raise AnalysisError(f"column {y_name!r} has a non-positive value ({bad:g}): form {self.name!r} "
                                    "takes the log of the metric and needs every value > 0")


def _saturating(params: np.ndarray, C: np.ndarray) -> np.ndarray:
    E, A, alpha = params
    return E + A * np.power(C, -alpha)


FORMS: dict[str, Law] = {
    "log-linear": Law("log-linear", ("a", "b"), "y = a + b log10(C)", True, True, False,
                      lambda C: np.column_stack([np.ones_like(C), np.log10(C)])),
    "linear": Law("linear", ("a", "b"), "y = a + b C", True, False, False,
                  lambda C: np.column_stack([np.ones_like(C), C])),
    "power": Law("power", ("a", "b"), "ln y = a + b ln(C)", True, True, True,
                 lambda C: np.column_stack([np.ones_like(C), np.log(C)])),
    "saturating": Law("saturating", ("E", "A", "alpha"), "y = E + A C^-alpha", False, True, False,
                      None, _saturating),
}


def get_law(form: str) -> Law:
    """The law named ``form``; AnalysisError naming the known forms otherwise."""
    try:
        return FORMS[form]
    except (KeyError, TypeError):
        raise AnalysisError(f"unknown form {form!r}: expected one of {', '.join(FORMS)} (or 'auto')") from None

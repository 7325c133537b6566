"""The forms of analysis.laws against their closed forms; what each form accepts, and the messages when not."""

import numpy as np
import pytest

from analysis import AnalysisError
from analysis.laws import FORMS, get_law

C = np.array([0.5, 3.0, 1e6, 2.5e9])


@pytest.mark.parametrize("form, design", [
    ("log-linear", lambda C: np.column_stack([np.ones_like(C), np.log10(C)])),
    ("linear", lambda C: np.column_stack([np.ones_like(C), C])),
    ("power", lambda C: np.column_stack([np.ones_like(C), np.log(C)])),
])
def test_design_matrices_and_predictions(form, design):
    law = get_law(form)
    np.testing.assert_allclose(law.design(C), design(C), rtol=1e-15)
    a, b = 1.7, -0.3
    want = {"log-linear": a + b * np.log10(C), "linear": a + b * C, "power": np.exp(a) * C ** b}[form]
    np.testing.assert_allclose(law.predict([a, b], C), want, rtol=1e-13)
    assert law.param_names == ("a", "b") and law.linear


def test_saturating_prediction_and_no_design():
    law = get_law("saturating")
    np.testing.assert_allclose(law.predict([0.8, 60.0, 0.35], C), 0.8 + 60.0 * C ** -0.35, rtol=1e-14)
    assert law.param_names == ("E", "A", "alpha") and not law.linear
    with pytest.raises(AnalysisError, match=r"^form 'saturating' is not linear in its parameters: it has no design "
                                            r"matrix$"):
        law.design(C)


def test_fit_space_is_ln_y_for_power_only():
    y = np.array([0.25, 1.0, 7.5])
    np.testing.assert_allclose(get_law("power").to_fit_space(y), np.log(y), rtol=1e-15)
    np.testing.assert_allclose(get_law("power").from_fit_space(np.log(y)), y, rtol=1e-15)
    for form in ("log-linear", "linear", "saturating"):
        np.testing.assert_array_equal(get_law(form).to_fit_space(y), y)
        np.testing.assert_array_equal(get_law(form).from_fit_space(y), y)


@pytest.mark.parametrize("form", ["log-linear", "power", "saturating"])
def test_a_log_of_the_capacity_needs_every_value_positive_and_names_the_first_bad_one(form):
    law = get_law(form)
    law.check([1e-3, 0.5, 1.0, 2.0])                        # below 1 is fine: only <= 0 has no log
    for bad, first in (([3.0, -2.0, 0.0], "-2"), ([0.0, 5.0, -1.0], "0"), ([0.5, 3.0, -2.0], "-2")):
        with pytest.raises(AnalysisError) as exc:
            law.check(bad)
        assert str(exc.value) == (f"column 'x' has a non-positive value ({first}): form {form!r} takes the log "
                                  "of the capacity and needs every value > 0")
    with pytest.raises(AnalysisError, match=r"^column 'params' has a non-positive value \(-2\)"):
        law.check([3.0, -2.0], x_name="params")


def test_linear_takes_any_capacity_and_only_power_needs_a_positive_metric():
    get_law("linear").check([-5.0, 0.0, 1.0], [-1.0, 0.0, 2.0])
    for form in ("log-linear", "saturating"):
        get_law(form).check([1.0, 2.0, 3.0], [-1.0, 0.0, 0.5])
    power = get_law("power")
    power.check([1.0, 2.0, 3.0], [1e-3, 0.5, 1.0])            # below 1 is fine
    power.check([1.0, 2.0, 3.0])                              # no metric given: nothing to check
    for bad, first in (([2.0, 0.0, -1.0], "0"), ([2.0, -0.5, 0.0], "-0.5"), ([0.5, 2.0, -1.0], "-1")):
        with pytest.raises(AnalysisError) as exc:
            power.check([1.0, 2.0, 3.0], bad)
        assert str(exc.value) == (f"column 'y' has a non-positive value ({first}): form 'power' takes the log "
                                  "of the metric and needs every value > 0")
    with pytest.raises(AnalysisError, match=r"^column 'rfid' has a non-positive value \(0\)"):
        power.check([1.0, 2.0], [1.0, 0.0], y_name="rfid")


@pytest.mark.parametrize("form", ["cubic", None, ["power"]])
def test_an_unknown_form_is_one_line_naming_the_known_ones(form):
    with pytest.raises(AnalysisError) as exc:
        get_law(form)
    assert str(exc.value) == (f"unknown form {form!r}: expected one of log-linear, linear, power, saturating "
                              "(or 'auto')")
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_every_form_is_registered_under_its_own_name():
    assert list(FORMS) == ["log-linear", "linear", "power", "saturating"]
    for name, law in FORMS.items():
        assert get_law(name) is law and law.name == name

"""analysis.design: the c-optimal "which capacity next" criterion, checked against independent algebra
(the textbook OLS prediction variance, a direct inverse of the enlarged weighted information), the
df rule, the cost model against np.polyfit, the width mapping and rankings known analytically."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import AnalysisError, design, fit

A, B = 40.0, -2.0
CAPS = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])
H0, H1 = 5286.0, 1158.0                   # DRoRAE fusion at 6 layers: params = 5286 + 1158 h


def table(caps=CAPS, seeds=1, sd=0.3, growth=1.0, seed=0, seconds=True) -> pd.DataFrame:
    """Grid rows of y = A + B log10 C + noise whose sd is multiplied by ``growth`` per decade."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, c in enumerate(caps):
        s = sd * growth ** (np.log10(c) - np.log10(caps[0]))
        for k in range(seeds):
            rows.append({"unit_id": f"u{i}-s{k}", "point_id": f"u{i}", "seed": k, "params": float(c),
                         "rfid": A + B * np.log10(c) + s * rng.standard_normal(),
                         **({"train_seconds": 10.0 * c ** 0.2, "eval_seconds": 5.0} if seconds else {})})
    return pd.DataFrame(rows)


def ols_prediction_variance(x, x0, s2):
    """The textbook Var(yhat0) of simple OLS: s2 (1/n + (x0 - xbar)^2 / Sxx)."""
    x = np.asarray(x, dtype=float)
    xbar = x.mean()
    return s2 * (1 / len(x) + (x0 - xbar) ** 2 / ((x - xbar) ** 2).sum())


# --- the variance after one more trial --------------------------------------------------------


def test_variance_after_a_trial_matches_the_textbook_ols_closed_form():
    df = table()
    res = fit(df, cov_type="nonrobust")            # one pooled variance: the classical OLS setting
    target = 1e8
    d = design.design(res, target)
    x = np.log10(df["params"].to_numpy())
    assert d.variance() == pytest.approx(ols_prediction_variance(x, 8.0, res.scale), rel=1e-10)
    for c in (1e4, 3e5, 3e6, 2e7, 1e8):            # a seed at the smallest, inside, at the largest, beyond
        expected = ols_prediction_variance(np.append(x, np.log10(c)), 8.0, res.scale)
        assert d.variance_after([c])[0] == pytest.approx(expected, rel=1e-10)
        assert d.variance_after([c])[0] < d.variance()          # one more trial never adds variance


def test_variance_after_with_a_noise_trend_matches_the_inverse_of_the_enlarged_weighted_information():
    df = table(seeds=3, sd=0.2, growth=2.0, seed=3)
    res = fit(df)                                   # the default: CR2, noise model from the seeds
    g0, g1 = res.noise.gamma
    C = df["params"].to_numpy()
    sig2 = lambda c: np.exp(g0 + g1 * np.log10(c))  # noqa: E731
    assert sig2(C.max()) / sig2(C.min()) > 3        # the weights differ: a dropped weight would show
    x0 = np.array([1.0, 8.0])
    d = design.design(res, 1e8)
    for c in (1e4, 1e5, 3e6, 1e7):
        X = np.column_stack([np.ones(len(C) + 1), np.log10(np.append(C, c))])
        W = np.diag(1 / sig2(np.append(C, c)))
        expected = x0 @ np.linalg.inv(X.T @ W @ X) @ x0
        assert d.variance_after([c])[0] == pytest.approx(expected, rel=1e-9)
        # the same without the noise trend (every weight 1 / scale) is not it
        unweighted = x0 @ np.linalg.inv(X.T @ X) @ x0 * res.scale
        assert abs(unweighted - expected) > 0.05 * expected


def test_pending_trials_enter_the_design_without_their_metric():
    df = table(seeds=2, sd=0.2, growth=1.5, seed=4)
    res = fit(df)
    g0, g1 = res.noise.gamma
    pending = [3e6, 2e7]
    C = np.append(df["params"].to_numpy(), pending)
    X = np.column_stack([np.ones(len(C)), np.log10(C)])
    M = X.T @ np.diag(np.exp(-(g0 + g1 * np.log10(C)))) @ X
    x0 = np.array([1.0, 8.0])
    d = design.design(res, 1e8, pending=pending)
    assert d.variance() == pytest.approx(x0 @ np.linalg.inv(M) @ x0, rel=1e-9)
    assert d.rows == len(df) + 2 and len(d.capacities) == len(CAPS) + 1        # 3e6 is trained already
    r = design.rank(res, df, 1e8, per="trial", pending=pending)
    assert r.now["variance"] == pytest.approx(d.variance(), rel=1e-12)
    assert r.table.set_index("capacity").loc[2e7, "kind"] == "seed"            # pending: one more is a seed


def test_choose_is_greedy_over_rank_with_the_chosen_trials_pending():
    df = table(seeds=2, sd=0.2, seed=5)
    res = fit(df)
    picks = design.choose(res, df, 1e8, n=3, per="trial")
    pending = []
    for _, pick in picks.iterrows():
        top = design.rank(res, df, 1e8, per="trial", pending=pending).table.iloc[0]
        assert pick["capacity"] == top["capacity"] and pick["reduction"] == pytest.approx(top["reduction"])
        pending.append(top["capacity"])
    assert list(picks["rank"]) == [1, 2, 3]


# --- degrees of freedom and widths --------------------------------------------------------------


def test_under_cr2_a_new_capacity_adds_a_degree_of_freedom_and_a_seed_does_not():
    df = table(seeds=2, sd=0.2, growth=1.5, seed=6)
    res = fit(df)
    r = design.rank(res, df, 1e8, per="trial")
    m = len(CAPS)
    assert r.now["df"] == m - 2
    t = r.table
    assert set(t["kind"]) == {"seed", "new"}
    assert (t.loc[t["kind"] == "seed", "df_after"] == m - 2).all()
    assert (t.loc[t["kind"] == "new", "df_after"] == m - 1).all()
    # a pending new capacity counts: now m + 1 capacities
    r2 = design.rank(res, df, 1e8, per="trial", pending=[2e7])
    assert r2.now["df"] == m - 1
    # the widths are 2 t(df') sqrt(V' + sigma^2(C0)), computed here from scratch
    s0 = np.exp(res.noise.gamma[0] + res.noise.gamma[1] * 8.0)
    for _, row in t.iterrows():
        q = stats.t.ppf(0.975, row["df_after"])
        assert row["width_after"] == pytest.approx(2 * q * math.sqrt(row["variance_after"] + s0), rel=1e-10)
    assert r.now["width"] == pytest.approx(2 * stats.t.ppf(0.975, m - 2) * math.sqrt(r.now["variance"] + s0))
    ci = design.rank(res, df, 1e8, per="trial", interval="ci").table
    for _, row in ci.iterrows():
        q = stats.t.ppf(0.975, row["df_after"])
        assert row["width_after"] == pytest.approx(2 * q * math.sqrt(row["variance_after"]), rel=1e-10)


def test_the_df_follow_the_fits_errors_classical_rows_and_known_variances_normal():
    df = table(seeds=2, sd=0.2, seed=7)
    t = design.rank(fit(df, cov_type="nonrobust"), df, 1e8, per="trial").table
    assert (t["df_after"] == len(df) + 1 - 2).all()                            # every trial adds a row
    df["rfid_se"] = 0.2
    r = design.rank(fit(df, weights="measurement"), df, 1e8, per="trial", interval="ci")
    assert np.isinf(r.table["df_after"]).all()
    row = r.table.iloc[0]
    assert row["width_after"] == pytest.approx(2 * stats.norm.ppf(0.975) * math.sqrt(row["variance_after"]))


def test_a_seed_and_a_new_capacity_differ_by_the_t_quantile_alone_at_equal_variance():
    """At one capacity (not yet trained, then trained by a pending trial) V' is the same; the width differs
    only by t(m - 1) against t(m - 2): a df rule that raised df for a seed would make them equal."""
    df = table(seeds=2, sd=0.2, seed=8)
    res = fit(df)
    new = design.rank(res, df, 1e8, [2e7], per="trial").table.set_index("capacity").loc[2e7]
    d = design.design(res, 1e8, pending=[2e7])
    seed = design.rank(res, df, 1e8, [2e7], per="trial", pending=[2e7]).table.set_index("capacity").loc[2e7]
    assert new["kind"] == "new" and seed["kind"] == "seed"
    assert seed["df_after"] == new["df_after"] == len(CAPS) - 1
    assert seed["variance_after"] == pytest.approx(d.variance_after([2e7])[0])


def test_power_law_widths_are_mapped_back_from_ln_y():
    df = table(sd=0.01, seed=9)
    res = fit(df, form="power")
    r = design.rank(res, df, 1e8, per="trial", interval="ci")
    m = res.params["a"] + res.params["b"] * math.log(1e8)
    for _, row in r.table.iterrows():
        half = stats.t.ppf(0.975, row["df_after"]) * math.sqrt(row["variance_after"])
        assert row["width_after"] == pytest.approx(math.exp(m + half) - math.exp(m - half), rel=1e-10)


def test_the_actual_interval_now_is_the_fits_own():
    df = table(seeds=2, sd=0.2, seed=10)
    res = fit(df)
    sf = res.get_prediction([1e8]).summary_frame(0.1).iloc[0]
    r = design.rank(res, df, 1e8, per="trial", alpha=0.1)
    assert r.actual["pi_width"] == pytest.approx(sf["obs_ci_upper"] - sf["obs_ci_lower"])
    assert r.actual["ci_width"] == pytest.approx(sf["mean_ci_upper"] - sf["mean_ci_lower"])


# --- rankings known analytically ----------------------------------------------------------------


def test_with_constant_noise_and_equal_costs_the_best_point_for_an_extrapolation_is_the_largest():
    df = table(seed=11)
    df["train_seconds"], df["eval_seconds"] = 60.0, 0.0                        # every unit costs the same
    res = fit(df, cov_type="nonrobust")
    cands = [2e4, 2e5, 2e6, 5e6, 9e6]
    for per in ("trial", "cost"):
        t = design.rank(res, df, 1e8, cands, per=per).table
        assert t.iloc[0]["capacity"] == 9e6 and t.iloc[0]["kind"] == "new"
        assert list(t["rank"]) == list(range(1, len(t) + 1))
        score = t["reduction_per_trial" if per == "trial" else "reduction_per_second"].to_numpy()
        assert np.all(np.diff(score) <= 0)                                    # best first


def test_with_constant_noise_a_target_at_the_centre_is_best_served_at_the_centre():
    """x0 = xbar: x0' M^-1 x = s2 / n for every x, so V' is least where x' M^-1 x is, at x = xbar."""
    caps = np.array([1e4, 1e5, 1e6, 1e7, 1e8])
    df = table(caps=caps, seed=12)
    res = fit(df, cov_type="nonrobust")
    t = design.rank(res, df, 1e6, [3e5, 9e5, 3e6], per="trial").table
    best = t.iloc[0]
    assert best["capacity"] == 1e6 and best["kind"] == "seed"   # the target's own capacity, trained already


def test_cost_divides_the_reduction():
    df = table(seeds=1, seed=13)
    res = fit(df)
    by_trial = design.rank(res, df, 1e8, per="trial").table.set_index("capacity")
    by_cost = design.rank(res, df, 1e8, per="cost").table.set_index("capacity")
    joined = by_cost.join(by_trial["reduction_per_trial"])
    assert np.allclose(joined["reduction_per_second"], joined["reduction_per_trial"] / joined["seconds"])


# --- the cost model -----------------------------------------------------------------------------


def searched_results(seed=0):
    """A searched sweep: each unit has 3 trial rows (2 pruned or unevaluated, 1 best) with simulated seconds."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, c in enumerate(CAPS):
        for k in range(2):
            for t in range(3):
                secs = math.exp(1.0 + 0.4 * math.log10(c) + 0.1 * rng.standard_normal())
                rows.append({"trial_id": f"u{i}-s{k}-t{t}", "unit_id": f"u{i}-s{k}", "point_id": f"u{i}", "seed": k,
                             "kind": "grid", "status": "completed", "params": c, "best": t == 2,
                             "rfid": A + B * math.log10(c) + 0.2 * rng.standard_normal() if t == 2 else np.nan,
                             "train_seconds": secs, "eval_seconds": 3.0 if t == 2 else np.nan})
    return pd.DataFrame(rows)


def test_the_cost_model_is_least_squares_of_ln_unit_seconds_on_log10_capacity():
    rows = searched_results()
    points = rows[rows["best"]]
    sums = rows.assign(s=rows["train_seconds"] + rows["eval_seconds"].fillna(0)).groupby("unit_id") \
        .agg(c=("params", "first"), s=("s", "sum"))
    c1, c0 = np.polyfit(np.log10(sums["c"]), np.log(sums["s"]), 1)
    model = design.fit_cost(points, "params", rows)
    assert model.coef == pytest.approx((c0, c1), rel=1e-10)
    assert model.units == len(sums) and model.capacities == len(CAPS)
    assert model.seconds([1e5])[0] == pytest.approx(math.exp(c0 + 5 * c1))
    # without the whole table only the best trial of each unit is counted: less
    assert design.fit_cost(points, "params").seconds([1e5])[0] < model.seconds([1e5])[0]
    # unit_id missing: point_id + seed make the unit
    alone = design.fit_cost(points.drop(columns="unit_id"), "params", rows.drop(columns="unit_id"))
    assert alone.coef == pytest.approx(model.coef, rel=1e-10)


def test_fewer_than_two_capacities_with_seconds_cost_the_median_unit():
    df = table(seeds=3)
    df.loc[df["params"] != CAPS[2], ["train_seconds", "eval_seconds"]] = np.nan
    df.loc[df["params"] == CAPS[2], "train_seconds"] = [10.0, 20.0, 60.0]
    res = fit(df)
    r = design.rank(res, df, 1e8)
    assert r.cost.coef is None and r.cost.median_seconds == 25.0              # 15, 25, 65
    assert (r.table["seconds"] == 25.0).all()
    assert any("median" in n for n in r.notes)


def test_no_seconds_columns_is_an_error_per_cost_and_fine_per_trial():
    df = table(seconds=False)
    res = fit(df)
    with pytest.raises(AnalysisError, match="train_seconds or eval_seconds column.*--per trial"):
        design.rank(res, df, 1e8)
    r = design.rank(res, df, 1e8, per="trial")
    assert r.cost is None and r.table["seconds"].isna().all()


# --- widths -------------------------------------------------------------------------------------


def drorae_table(perturb=0.0, other_layers=True):
    widths = [2, 8, 32, 128, 512, 2048]
    df = table(caps=np.array([H0 + H1 * h for h in widths]), seed=14)
    df["expert_hidden"], df["fused_layers"] = widths, 6
    df.loc[2, "params"] += perturb
    if other_layers:                                  # a layer panel: fewer rows, another law of params
        extra = table(caps=np.array([9e3, 2e4]), seed=15).assign(expert_hidden=[4, 4], fused_layers=[2, 3])
        df = pd.concat([df, extra], ignore_index=True)
    return df


def test_new_capacities_snap_to_the_nearest_width_at_the_most_common_layer_count():
    df = drorae_table()
    wm = design.width_map(df, "params")
    assert (wm.intercept, wm.slope, wm.fused_layers) == (H0, H1, 6.0)
    res = fit(df)
    t = design.rank(res, df, 1e8, [1e5, 3e6], per="trial").table.set_index("capacity")
    h = round((1e5 - H0) / H1)                                                 # 81.8 -> 82
    assert t.loc[H0 + H1 * h, "width"] == h and t.loc[H0 + H1 * h, "kind"] == "new"
    assert t.loc[H0 + H1 * 2586, "width"] == 2586                             # 3e6 -> 2585.9 -> 2586
    assert t.loc[H0 + H1 * 512, "width"] == 512 and t.loc[H0 + H1 * 512, "kind"] == "seed"
    assert 1e5 not in t.index                                                   # ranked at the exact capacity


def test_a_candidate_snapped_onto_a_trained_width_is_that_seed():
    df = drorae_table(other_layers=False)
    res = fit(df)
    t = design.rank(res, df, 1e8, [H0 + H1 * 512 + 10], per="trial").table
    assert (t["kind"] == "seed").all() and len(t) == 6


def test_no_width_column_where_params_is_not_exactly_linear_in_the_width():
    df = drorae_table(perturb=3.0)
    assert design.width_map(df, "params") is None
    assert "width" not in design.rank(fit(df), df, 1e8, per="trial").table.columns
    assert design.width_map(table(), "params") is None                        # no expert_hidden column


def test_with_the_width_as_capacity_a_candidate_is_its_rounded_width():
    df = drorae_table(other_layers=False)
    res = fit(df, x="expert_hidden")
    t = design.rank(res, df, 1e5, [100.4, 3000.6], per="trial").table.set_index("capacity")
    assert t.loc[100.0, "width"] == 100 and t.loc[3001.0, "width"] == 3001


# --- candidates and refusals --------------------------------------------------------------------


def test_default_candidates_are_midpoints_and_two_steps_beyond_never_past_the_target():
    caps = [1e4, 1e5, 1e6, 1e8]                     # log spacings 1, 1, 2: median 1
    np.testing.assert_allclose(design.default_candidates(caps, 1e10),
                               [10 ** 4.5, 10 ** 5.5, 1e7, 1e9, 1e10], rtol=1e-12)
    np.testing.assert_allclose(design.default_candidates(caps, 5e9), [10 ** 4.5, 10 ** 5.5, 1e7, 1e9], rtol=1e-12)
    np.testing.assert_allclose(design.default_candidates(caps, 1e8), [10 ** 4.5, 10 ** 5.5, 1e7], rtol=1e-12)


def test_every_trained_capacity_is_a_seed_candidate():
    df = table(seeds=2, seed=16)
    t = design.rank(fit(df), df, 1e8, per="trial").table
    assert sorted(t.loc[t["kind"] == "seed", "capacity"]) == list(CAPS)
    np.testing.assert_allclose(sorted(t.loc[t["kind"] == "new", "capacity"]),
                               design.default_candidates(CAPS, 1e8), rtol=1e-12)


@pytest.mark.parametrize("kwargs, words", [
    ({"target": 0}, "target 0: expected a finite capacity > 0"),
    ({"target": float("nan")}, "target nan"),
    ({"target": float("inf")}, "target inf"),
    ({"target": "big"}, "target 'big': expected a number"),
    ({"candidates": [1e5, -3]}, "candidate -3"),
    ({"candidates": []}, "no candidate capacities"),
    ({"per": "money"}, "per 'money': expected one of cost, trial"),
    ({"interval": "pp"}, "interval 'pp': expected one of pi, ci"),
    ({"pending": [0]}, "pending capacity 0"),
])
def test_bad_arguments_are_analysis_errors(kwargs, words):
    df = table()
    res = fit(df)
    args = {"target": 1e8, **kwargs}
    target = args.pop("target")
    with pytest.raises(AnalysisError, match=None) as err:
        design.rank(res, df, target, **args)
    assert words in str(err.value)


def test_a_saturating_law_is_refused_in_one_line():
    C = np.repeat(np.geomspace(1e4, 1e8, 8), 2)
    y = 0.5 + 3 * C ** -0.3 + np.random.default_rng(0).normal(0, 0.005, C.size)
    res = fit(pd.DataFrame({"params": C, "rfid": y}), form="saturating")
    with pytest.raises(AnalysisError, match="'saturating' law is not linear in its parameters") as err:
        design.rank(res, pd.DataFrame({"params": C}), 1e9, per="trial")
    assert "\n" not in str(err.value)


# --- criterion "tool": the tool's own interval, read off the design -------------------------------


@pytest.mark.parametrize("c", [1e4, 3e5, 2e7])                  # a seed at a one-row capacity, and two new ones
def test_the_tool_criterion_has_the_df_and_noise_uncertainty_the_refit_will_have(c):
    """The Bell-McCaffrey df and the noise model's variance at the target depend on the design alone: the
    criterion's must equal those of the fit refitted with the trial's row (whatever its metric)."""
    df = table(seeds=1, sd=0.3, seed=17)
    df = pd.concat([df, table(caps=CAPS[2:4], seeds=1, sd=0.3, seed=18)], ignore_index=True)   # 2 seeds at two
    res = fit(df)
    t = design.rank(res, df, 1e8, [2e7, 3e5], per="trial", criterion="tool").table.set_index("capacity")
    row = t.loc[c]
    refit = fit(pd.concat([df, pd.DataFrame({"params": [c], "rfid": [A + B * np.log10(c) + 0.7]})], ignore_index=True))
    sf = refit.get_prediction([1e8]).summary_frame().iloc[0]
    assert row["df_after"] == pytest.approx(sf["mean_df"], rel=1e-9)
    d = design.design(res, 1e8)
    C_after = np.append(df["params"].to_numpy(), c)
    assert d.noise_v(C_after) == pytest.approx(refit.noise.log_var([1e8])[1][0], rel=1e-9)
    # the width: noise.interval of the c-optimal V' with those, computed here from the parts
    from analysis import noise
    m0 = res.noise.log_var([1e8])[0][0]
    lo, hi = noise.interval(0.0, math.sqrt(row["variance_after"]), sf["mean_df"], m0,
                            refit.noise.log_var([1e8])[1][0], 0.05)
    assert row["width_after"] == pytest.approx(hi[0] - lo[0], rel=1e-9)
    assert row["variance_after"] == pytest.approx(d.variance_after([c])[0], rel=1e-12)


def test_the_tool_criterion_is_the_c_optimal_one_for_classical_errors():
    df = table(seeds=2, sd=0.2, seed=19)
    res = fit(df, cov_type="nonrobust")
    a = design.rank(res, df, 1e8, per="trial").table
    b = design.rank(res, df, 1e8, per="trial", criterion="tool").table
    pd.testing.assert_frame_equal(a, b)


def test_an_unknown_criterion_is_an_analysis_error():
    df = table()
    with pytest.raises(AnalysisError, match="criterion 'd-optimal': expected one of c-optimal, tool"):
        design.rank(fit(df), df, 1e8, criterion="d-optimal")

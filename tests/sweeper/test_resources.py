"""Per-trial resources: the spec's CPUs and each width's GPU share (small points share a GPU)."""

import re

import pytest

from helpers import SMOKE
from model.errors import UserError
from sweeper.plan import build_plan
from sweeper.run import trial_resources
from sweeper.spec import load_spec
from sweeper.trial_config import TrialConfig


def test_listed_widths_get_their_gpu_share_and_other_trials_the_default():
    plan = build_plan(load_spec(SMOKE, ["resources.gpu=1", "resources.cpu=4", "resources.gpu_share={2: 0.25, 16: 0.5}",
                                        "controls.runs=[rae,last_layer]"]))
    asked = {u.unit_id: trial_resources(plan.spec.resources, TrialConfig.of(u, {}, True, 0).to_tune())
             for u in plan.units}
    assert asked["h2-k6-s0"] == {"cpu": 4, "gpu": 0.25}
    assert asked["h16-k6-s0"] == {"cpu": 4, "gpu": 0.5}
    assert asked["h128-k6-s0"] == {"cpu": 4, "gpu": 1}
    assert asked["rae-s0"] == {"cpu": 4, "gpu": 1}  # no fusion: the default share


@pytest.mark.parametrize("override, message", [
    ("resources.gpu_share={2: 0.5}", "resources: gpu_share needs resources.gpu > 0"),
    ("resources.gpu_share={2: 1.5}", "gpu_share: expected positive widths mapped to fractions in (0, 1], got {2: 1.5}"),
])
def test_gpu_share_without_a_gpu_or_above_one_is_refused(override, message):
    extra = [] if "needs" in message else ["resources.gpu=1"]
    with pytest.raises(UserError, match=re.escape(message)):
        load_spec(SMOKE, [*extra, override])

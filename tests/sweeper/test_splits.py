"""The selection split (what the search sees) and the evaluation split (what is reported) never overlap."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from model import FeatureSet
from sweeper.spec import SpecError, parse_spec
from sweeper.splits import evenly_spaced, split, splits_of


def _spec(tiny_raw, num_train, num_val, n_images, select_from="val", select_images=None):
    ev = {"n_images": n_images, "select_from": select_from}
    if select_images is not None:
        ev["select_images"] = select_images
    return parse_spec({**tiny_raw, "data": {"num_train": num_train, "num_val": num_val}, "eval": ev})


@st.composite
def val_designs(draw):
    num_val = draw(st.integers(3, 400))
    n_images = draw(st.integers(2, num_val - 1))
    select = draw(st.none() | st.integers(1, num_val - n_images))
    return num_val, n_images, select


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # read only
@given(design=val_designs())
def test_validation_images_split_into_disjoint_selection_and_evaluation_by_index(tiny_raw, design):
    num_val, n_images, select = design
    splits = splits_of(_spec(tiny_raw, 100, num_val, n_images, select_images=select), 100, num_val)
    evaluation, selection = set(splits.evaluation), set(splits.selection)
    assert evaluation == set(range(n_images))  # the first n_images, whatever the selection
    assert not evaluation & selection
    assert len(selection) == (num_val - n_images if select is None else select)
    assert selection <= set(range(num_val))
    assert list(splits.training) == list(range(100))  # nothing held out of training


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # read only
@given(n_train=st.integers(2, 5000), frac=st.floats(0, 1), n_images=st.integers(2, 50))
def test_a_selection_held_out_of_training_is_never_trained_on(tiny_raw, n_train, frac, n_images):
    k = 1 + int(frac * (n_train - 2))  # 1 .. n_train - 1
    spec = _spec(tiny_raw, n_train, n_images, n_images, select_from="train", select_images=k)
    splits = splits_of(spec, n_train, n_images)
    selection, training = splits.selection.tolist(), splits.training.tolist()
    assert len(set(selection)) == k and all(0 <= i < n_train for i in selection)
    assert not set(selection) & set(training) and sorted(selection + training) == list(range(n_train))
    gaps = torch.diff(splits.selection)
    assert gaps.numel() == 0 or gaps.max() - gaps.min() <= 1  # evenly spaced: every stratum of the split


def test_evenly_spaced_positions_are_the_centres_of_equal_strata():
    assert evenly_spaced(4, 100).tolist() == [12, 37, 62, 87]
    assert evenly_spaced(3, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("data, ev, expected", [
    ({"num_val": 16}, {"n_images": 16}, "no validation images are left for the selection split"),
    ({"num_val": 32}, {"n_images": 16, "select_images": 17}, "eval.select_images (17) exceeds the 16"),
    ({"num_val": 16}, {"n_images": 16, "select_from": "train"}, "eval.select_images: required"),
    ({"num_val": 16, "num_train": 50}, {"n_images": 16, "select_from": "train", "select_images": 50},
     "eval.select_images (50) leaves no training images"),
    ({"num_val": 32}, {"n_images": 16, "select_images": 0}, "eval.select_images"),
])
def test_a_split_that_cannot_hold_both_sets_is_refused_naming_the_key(tiny_raw, data, ev, expected):
    with pytest.raises(SpecError) as err:
        parse_spec({**tiny_raw, "data": data, "eval": ev})
    assert expected in str(err.value) and "\n" not in str(err.value)


def _labelled(n):  # images whose value is their index, to read positions back
    return TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(),
                         torch.arange(n))


def _features(n):
    x = torch.arange(n, dtype=torch.float32)
    return FeatureSet(x.view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(), x.view(n, 1, 1, 1).expand(n, 2, 4, 3).clone(),
                      x.view(n, 1, 1).expand(n, 4, 3).clone())


@pytest.mark.parametrize("select_from", ["val", "train"])
def test_datasets_and_feature_sets_split_into_the_same_images(tiny_raw, select_from):
    spec = _spec(tiny_raw, 40, 20, 8, select_from=select_from, select_images=5)
    splits = splits_of(spec, 40, 20)
    got_ds = split(splits, _labelled(40), _labelled(20))
    got_fs = split(splits, _features(40), _features(20))
    for ds, fs in zip(got_ds, got_fs):
        ids = ds.tensors[1].tolist()
        assert len(fs) == len(ids)
        images, layers, base = fs.batch(torch.arange(len(fs)), torch.device("cpu"))
        assert images[:, 0, 0, 0].tolist() == ids and base[:, 0, 0].tolist() == ids
        assert layers[0, :, 0, 0].tolist() == ids  # (L, B, T, D): the same rows' features
    train, select, evaluate = (d.tensors[1].tolist() for d in got_ds)
    assert evaluate == list(range(8))
    if select_from == "val":
        assert select == list(range(8, 13)) and train == list(range(40))
    else:
        assert select == evenly_spaced(5, 40).tolist() and not set(select) & set(train) and len(train) == 35

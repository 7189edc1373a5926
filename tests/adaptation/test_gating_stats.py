"""The gating measures on hand-built masks whose shares and Jaccard distances are known."""

import math

import pytest
import torch

from mglightning.adaptation.gating_stats import (
    channel_measures,
    channel_set_from_text,
    channel_set_text,
    channel_shares,
    flip_rate,
    majority_on,
    mean_pairwise_jaccard_distance,
    pairwise_jaccard_distances,
    zeroed_groups,
)


def test_channel_shares_count_never_always_and_sometimes_on_channels():
    masks = torch.tensor(  # 3 inputs, 5 channels: 0 and 1 never on, 2 always, 3 and 4 sometimes
        [[0, 0, 1, 1, 0],
         [0, 0, 1, 0, 1],
         [0, 0, 1, 1, 1]], dtype=torch.float32)
    assert channel_shares(masks) == pytest.approx(
        {"always_off": 0.4, "always_on": 0.2, "input_dependent": 0.4})


def test_one_input_leaves_no_channel_input_dependent():
    masks = torch.tensor([[1, 0, 0, 1]])
    assert channel_shares(masks) == {"always_off": 0.5, "always_on": 0.5, "input_dependent": 0.0}


def test_channel_measures_over_two_layers_count_channels_not_layers():
    """Two layers' masks of the same 3 inputs, side by side: the shares count channels of
    both together (5), not the mean of the layers' shares; the input sets are over all 5."""
    first = torch.tensor([[1, 0], [1, 0], [1, 1]])  # channel 0 always on, 1 sometimes
    second = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 0, 1]])  # off, sometimes, always on
    measures = channel_measures(torch.cat([first, second], dim=1))
    assert measures["always_off"] == pytest.approx(1 / 5)  # layer means: (0 + 1/3) / 2
    assert measures["always_on"] == pytest.approx(2 / 5)
    assert measures["input_dependent"] == pytest.approx(2 / 5)
    # sets {0, 4}, {0, 3, 4}, {0, 1, 4}: distances 1/3, 1/3, 1/2
    assert measures["input_jaccard"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    assert measures["majority_on"] == "10001"


def test_flip_rate_is_the_share_of_entries_that_changed():
    before = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])
    after = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])  # 3 of 8 entries differ
    assert flip_rate(before, after) == 3 / 8
    assert flip_rate(before, before) == 0.0
    assert flip_rate(before, 1 - before) == 1.0
    with pytest.raises(ValueError, match="shapes"):
        flip_rate(before, after[:1])


def test_majority_on_needs_strictly_more_than_half():
    masks = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])  # on 3/4, 2/4, 1/4
    assert majority_on(masks).tolist() == [True, False, False]


def test_jaccard_distances_of_known_sets():
    sets = torch.tensor(
        [[1, 1, 0, 0],   # {0, 1}
         [0, 1, 1, 0],   # {1, 2}: shares 1 of 3 with {0, 1}
         [1, 1, 0, 0],   # {0, 1} again
         [0, 0, 0, 0]])  # the empty set
    distances = pairwise_jaccard_distances(sets)
    assert distances[0, 1] == pytest.approx(2 / 3)
    assert distances[0, 2] == 0.0
    assert distances[0, 3] == 1.0  # nothing shared with a non-empty set
    assert distances[3, 3] == 0.0  # two empty sets are the same set
    assert torch.equal(distances, distances.T)
    # pairs: (0,1) 2/3, (0,2) 0, (0,3) 1, (1,2) 2/3, (1,3) 1, (2,3) 1
    expected = (2 / 3 + 0 + 1 + 2 / 3 + 1 + 1) / 6
    assert mean_pairwise_jaccard_distance(sets) == pytest.approx(expected)


def test_jaccard_distance_of_disjoint_and_identical_sets():
    assert mean_pairwise_jaccard_distance(torch.tensor([[1, 0, 1], [0, 1, 0]])) == 1.0
    assert mean_pairwise_jaccard_distance(torch.ones(4, 6)) == 0.0


def test_fewer_than_two_sets_have_no_mean_distance():
    assert math.isnan(mean_pairwise_jaccard_distance(torch.ones(1, 3)))
    assert math.isnan(mean_pairwise_jaccard_distance(torch.ones(0, 3)))


def test_channel_set_text_round_trips():
    channels = torch.tensor([True, False, False, True, True])
    assert channel_set_text(channels) == "10011"
    assert torch.equal(channel_set_from_text("10011"), channels)


def test_zeroed_groups_are_rows_zero_together_with_their_bias_entry():
    weight = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    bias = torch.tensor([0.0, 0.1, 0.0, -0.0])
    # group 0: all zero; 1: bias nonzero; 2: weight nonzero; 3: zero (−0.0 counts as zero)
    assert zeroed_groups(weight, bias) == 2

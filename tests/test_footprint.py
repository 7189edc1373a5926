"""A run's memory priced before it allocates: the op-output count against hand counts."""

from __future__ import annotations

import re

import pytest
import torch

from mglightning.build import build_datamodule, build_network
from mglightning.data import memory
from mglightning.errors import ConfigError
from mglightning.footprint import PARAMETER_COPIES, OutputBytes, check_run_fits


def test_op_outputs_are_counted_once_and_views_and_in_place_ops_not_at_all():
    """Linear(3, 5) on 2 inputs makes 2x5 float32 (40 bytes), ReLU another 40; a view and an
    in-place ReLU make nothing new."""
    with torch.device("meta"):
        layer, inputs, counter = torch.nn.Linear(3, 5), torch.zeros(2, 3), OutputBytes()
        with counter:
            hidden = layer(inputs)
            torch.relu(hidden).view(10).relu_()
    assert counter.total == 40 + 40


def test_a_run_is_priced_with_its_parameters_in_copies_and_refused_in_one_line(
    tiny_config, monkeypatch
):
    cfg = tiny_config("model=mlp2")
    datamodule = build_datamodule(cfg)
    num_parameters = sum(p.numel() for p in build_network(cfg, datamodule).parameters())
    copies = PARAMETER_COPIES + cfg.method.clients_per_round
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2 * 4 * num_parameters
                        * copies)  # the parameters alone take all a run may plan for
    with pytest.raises(ConfigError) as refused:
        check_run_fits(cfg, datamodule, torch.device("cpu"))
    message = str(refused.value)
    assert f"({num_parameters} in {copies} copies)" in message and "\n" not in message
    assert re.search(r"activations [\d.]+ .?B \(a node's \d+ images at once\)", message)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 10**12)
    check_run_fits(cfg, datamodule, torch.device("cpu"))

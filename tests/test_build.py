"""The parts built from their ``_target_`` nodes (mglightning/build.py): a swap in the config
is a swap of the built object, and a null part is no part."""

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from mglightning.build import build_datamodule, build_learner, build_logger
from mglightning.config import ConfigError
from mglightning.federated.prox import L1, GroupLasso
from mglightning.models.backbones import cnn7


def test_the_regularizer_is_the_target_the_method_names(tiny_config):
    cfg = tiny_config()
    learner = build_learner(cfg, build_datamodule(cfg))
    regularizer = learner.server_step.regularizer
    assert isinstance(regularizer, GroupLasso) and regularizer.gamma == cfg.method.regularizer.gamma
    gate_channels = sum(learner.network.blocks[layer].spec.out
                        for layer in learner.network.gated_layers)
    assert regularizer.num_groups == gate_channels  # one group per gated output channel

    l1 = tiny_config("method.regularizer._target_=mglightning.federated.prox.L1.for_network")
    regularizer = build_learner(l1, build_datamodule(l1)).server_step.regularizer
    assert isinstance(regularizer, L1)
    assert len(regularizer.members) == int(learner.flat.gate_mask.sum())

    off = tiny_config("method.regularizer=null")
    assert build_learner(off, build_datamodule(off)).server_step.regularizer is None


def test_the_backbone_is_the_model_s_target_at_the_seed_s_x0(tiny_config):
    cfg = tiny_config("model=cnn7")
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    torch.manual_seed(cfg.seed)
    by_hand = cnn7(datamodule.input_shape, datamodule.num_classes,
                   gated_layers=list(cfg.model.gated_layers))
    assert learner.network.gated_layers == by_hand.gated_layers
    assert all(torch.equal(mine, theirs) for mine, theirs in
               zip(learner.network.state_dict().values(), by_hand.state_dict().values(),
                   strict=True))


def test_the_logger_is_the_target_of_its_option(tiny_config):
    assert build_logger(tiny_config("logger=none")) is None
    assert isinstance(build_logger(tiny_config("logger=csv")), CSVLogger)


def test_a_sparsity_budget_without_gates_is_refused_in_one_line(tiny_config):
    cfg = tiny_config("method=metagater_nogate", "method.local.sparsity_off=0.9")
    with pytest.raises(ConfigError, match="sparsity_off=0.9: a sparsity budget needs gates"):
        build_learner(cfg, build_datamodule(cfg))
    gated = tiny_config("method.local.sparsity_off=0.9", "method.local.sparsity_weight=2")
    solver = build_learner(gated, build_datamodule(gated)).local_solver
    assert (solver.sparsity_off, solver.sparsity_weight) == (0.9, 2.0)

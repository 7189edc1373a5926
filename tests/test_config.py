"""Config validation: every shipped config validates; bad keys, types and ranges end
in one line naming the key, the value and what is allowed, before any work starts."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from mglightning.build import build_datamodule, compose_config
from mglightning.config import CONF_DIR, TRAINER_ARGS_SET_BY_RUN, ConfigError, validate
from mglightning.data.datamodule import FederatedDataModule
from mglightning.train import run


def compose_train(*overrides: str):
    """The real train config as the command line composes it, without the tests' shrinking."""
    return compose_config(overrides)


def option_overrides() -> list[str]:
    """``group=option`` for every option file of every config group that train composes."""
    return [
        f"{path.parent.name}={path.stem}"
        for group in ("dataset", "model", "method", "logger", "experiment")
        for path in sorted((CONF_DIR / group).glob("*.yaml"))
    ]


@pytest.mark.parametrize("override", option_overrides())
def test_every_shipped_config_composes_and_validates(override):
    validate(compose_train(override))


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        validate(compose_train(*overrides))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("rounds=0", "rounds=0: must be an integer >= 1"),
        ("rounds=abc", "rounds='abc': must be an integer >= 1"),
        ("seed=-1", "seed=-1: must be an integer >= 0"),
        ("checkpoint.every_n_rounds=0", "checkpoint.every_n_rounds=0: must be an integer >= 1"),
        ("method.local.steps=0", "method.local.steps=0: must be an integer >= 1"),
        ("method.local.steps=1.5", "method.local.steps=1.5: must be an integer >= 1"),
        ("method.local.lr=-0.1", "method.local.lr=-0.1: must be a number > 0"),
        ("method.local.lr=0", "method.local.lr=0: must be a number > 0"),
        ("method.clients_per_round=0", "method.clients_per_round=0: must be an integer >= 1"),
        ("dataset.support_fraction=1.0", "dataset.support_fraction=1.0: must be a number > 0 "
                                         "and < 1"),
        ("dataset.partition.size_range=[9,3]", "dataset.partition.size_range=[9, 3]: must be "
                                               "[min, max]"),
        ("method.adaptation._target_=mglightning.adaptation.steps.three_stage",
         "method.adaptation._target_='mglightning.adaptation.steps.three_stage': must name an "
         "importable class or function"),
        ("faults.inject.kind=hang", "faults.inject.kind='hang': must be one of ['raise', 'nan']"),
        ("method.gate_noise=true", "method.gate_noise=True: must be one of ['none', 'logistic', "
                                   "'annealed']"),
        ("method.temperature_end=0", "method.temperature_end=0: must be a number > 0 or null"),
        ("model.gate_bias_init=high", "model.gate_bias_init='high': must be a number or null"),
        ("method.local.gate_lr=-1", "method.local.gate_lr=-1: must be a number >= 0 or null"),
        ("method.adaptation.gate_lr=-1", "method.adaptation.gate_lr=-1: must be a number >= 0 "
                                         "or null"),
        ("method.adaptation.stage1_steps=0", "method.adaptation.stage1_steps=0: must be an "
                                             "integer >= 1 or null"),
        ("method=metagater_nogate method.adaptation.stage1_steps=2",
         "method.adaptation.stage1_steps=2: mglightning.adaptation.steps.one_step does not "
         "take it; set it to null"),
        ("method=metasnip method.adaptation.keep_fraction=1.5",
         "method.adaptation.keep_fraction=1.5: must be a number > 0 and <= 1"),
        ("method=perfedavg_fo method.local.alpha=0", "method.local.alpha=0: must be a number > 0"),
        ("method=perfedavg_fo method.local.beta=-1", "method.local.beta=-1: must be a number > 0"),
        ("method=perfedavg_hf method.local.delta=0", "method.local.delta=0: must be a number > 0"),
        ("logger=wandb logger.init_timeout=0", "logger.init_timeout=0: must be a number > 0"),
        ("logger.mode=sometimes", "logger.mode='sometimes': must be one of [None, 'online', "
                                  "'offline', 'disabled']"),
        ("method.regularizer.gamma=-1", "method.regularizer.gamma=-1: must be a number >= 0"),
        ("model.temperature=0", "model.temperature=0: must be a number > 0"),
        ("method.server.beta=0", "method.server.beta=0: must be a number > 0"),
        ("faults.max_failed_rounds=0", "faults.max_failed_rounds=0: must be an integer >= 1"),
        ("model.gated_layers=[4]", "model.gated_layers=[4]: cnn4 has layers 1..3"),
        ("resume=maybe", "resume='maybe': must be true or false"),
        ("progress_bar=3", "progress_bar=3: must be true or false"),
        ("deterministic=always", "deterministic='always': must be one of [False, True, 'warn']"),
        ("output_root=5", "output_root=5: must be a string"),
        ("output_root=${nowhere}", "output_root: cannot be resolved"),
        ("dataset.source.download=maybe", "dataset.source.download='maybe': must be true or "
                                          "false"),
        ("dataset=synthetic dataset.source.num_classes=1", "dataset.source.num_classes=1: must "
                                                           "be an integer >= 2"),
        ("dataset=synthetic dataset.source.shape=[1,16]", "dataset.source.shape=[1, 16]: must "
                                                          "be a list of 3 integers >= 1"),
        ("dataset.source._target_=mglightning.data.datasets.imagenet",
         "dataset.source._target_='mglightning.data.datasets.imagenet': must name an importable "
         "class or function"),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(override, expected):
    assert expected in config_error(*override.split())


@pytest.mark.parametrize(
    "override, expected",
    [
        ("+roundz=3", "unknown key roundz=3 (did you mean rounds?): allowed at the top level"),
        ("+method.local.stepz=3", "unknown key method.local.stepz=3 (did you mean steps?): "
                                  "mglightning.federated.local.ProximalSGD takes steps"),
        ("+trainer.max_epoch=3", "unknown key trainer.max_epoch=3 (did you mean max_epochs?)"),
        ("+trainer.max_epochs=3", "trainer.max_epochs=3: the run sets this Trainer argument "
                                  "itself (set rounds)"),
        ("+trainer.enable_progress_bar=false", "(set progress_bar)"),
        ("+faults.inject.node=[1]", "unknown key faults.inject.node=[1]"),
        ("+method.adaptation.foo=1", "unknown key method.adaptation.foo=1: "
                                     "mglightning.adaptation.steps.two_stage takes"),
        ("+method.regularizer.gama=1", "unknown key method.regularizer.gama=1 (did you mean "
                                       "gamma?): mglightning.federated.prox.GroupLasso."
                                       "for_network takes gamma, flat, network"),
        ("+model.gate_hiden=3", "unknown key model.gate_hiden=3 (did you mean gate_hidden?)"),
        ("+method.meta_checkpoint=x.ckpt", "unknown key method.meta_checkpoint='x.ckpt': "
                                           "allowed under method are"),
        ("method.server._target_=nowhere.Strategy", "method.server._target_='nowhere.Strategy': "
                                                    "must name an importable class"),
        ("+dataset.source.samples_per_class=3", "unknown key dataset.source.samples_per_class=3: "
                                                "mglightning.data.datasets.fmnist takes download"),
        # the loader's data_root is the caller's (positional-only), never a key
        ("+dataset.source.data_root=x", "unknown key dataset.source.data_root='x'"),
    ],
)
def test_unknown_keys_added_with_plus_are_rejected(override, expected):
    assert expected in config_error(*override.split())


@pytest.mark.parametrize("deterministic, benchmark", [(False, True), (True, False),
                                                      ("warn", False)])
def test_deterministic_switches_cudnn_autotuning_off(deterministic, benchmark):
    cfg = compose_train(f"deterministic={str(deterministic).lower()}")
    validate(cfg)
    assert cfg.trainer.deterministic == deterministic and cfg.trainer.benchmark is benchmark


def test_keys_of_other_options_and_declared_keys_are_accepted():
    """A partitioner switched by its ``_target_`` takes its own key (a field of the partitioner
    it names) and its predecessor's, nulled; a Lightning Trainer option is a Trainer parameter.
    (Nodes 1 and 3 are training nodes at seed 0.)"""
    validate(compose_train(
        "dataset.partition._target_=mglightning.data.partition.DirichletPartitioner",
        "dataset.partition.classes_per_node=null", "+dataset.partition.alpha=0.5",
        "+trainer.precision=32", "faults.inject.clients=[1,3]", "faults.inject.rounds=[2]"))


def test_unknown_key_from_an_experiment_file_is_rejected():
    """Experiment files merge without Hydra's struct check: a typo there must still fail."""
    cfg = compose_train("experiment=table1_cifar10")
    with open_dict(cfg):
        cfg.method.clients_per_rnd = 5
    with pytest.raises(ConfigError, match="unknown key method.clients_per_rnd=5 "
                                          r"\(did you mean clients_per_round\?\)"):
        validate(cfg)


def test_several_problems_are_reported_together_on_one_line():
    message = config_error("rounds=0", "method.local.lr=-1")
    assert "rounds=0" in message and "method.local.lr=-1" in message


def test_hydra_rejects_unknown_keys_without_plus():
    with pytest.raises(ConfigCompositionException, match="roundz"):
        compose_train("roundz=3")


def test_clients_per_round_is_checked_against_the_training_nodes_the_data_module_makes(
        tiny_config):
    """validate() counts the training nodes from the config; the data module, which loads the
    data, must agree: K equal to its count passes, one more fails."""
    datamodule = build_datamodule(tiny_config())
    num_train = len(datamodule.train_clients)
    validate(tiny_config(f"method.clients_per_round={num_train}"))
    with pytest.raises(ConfigError, match=rf"method.clients_per_round={num_train + 1}: must be "
                                          rf"at most the {num_train} training nodes"):
        validate(tiny_config(f"method.clients_per_round={num_train + 1}"))


def test_synthetic_runs_with_every_method_s_default_clients_per_round():
    for method in sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml")):
        validate(compose_train("dataset=synthetic", f"method={method}"))


def test_fault_injection_into_a_target_node_is_rejected(tiny_config):
    datamodule = build_datamodule(tiny_config())
    target_id = datamodule.target_clients[0].node_id
    train_ids = [client.node_id for client in datamodule.train_clients]
    validate(tiny_config(f"faults.inject.clients=[{train_ids[0]}]"))
    with pytest.raises(ConfigError, match=rf"nodes \[{target_id}\] are not training nodes"):
        validate(tiny_config(f"faults.inject.clients=[{target_id}]"))


def test_no_training_node_left_is_a_config_error():
    message = config_error("dataset=synthetic", "dataset.num_target_nodes=24")
    assert message == ("dataset.num_target_nodes=24: must be between 0 and the 24 nodes minus "
                       "one (23), so that at least one training node remains")


@pytest.mark.parametrize("override", ["rounds=-2", "method.clients_per_round=21"])
def test_run_validates_before_any_work(tiny_config, monkeypatch, override):
    """No data loaded, no run folder made: the error comes before both."""
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(FederatedDataModule, "setup", no_data)
    cfg = tiny_config(override)
    with pytest.raises(ConfigError, match=override):
        run(cfg)
    assert not Path(cfg.output_dir).exists()


def test_trainer_arguments_set_by_the_run_are_trainer_parameters():
    """The list stays in step with Lightning: each entry is a real Trainer argument."""
    parameters = inspect.signature(lightning.pytorch.Trainer).parameters
    assert set(TRAINER_ARGS_SET_BY_RUN) <= set(parameters)


def test_a_method_s_key_is_refused_under_another_method_in_one_line():
    """MetaSNIP's meta_checkpoint skips training: under MetaGater it must not pass silently."""
    message = config_error("method=metagater", "+method.meta_checkpoint=other/last.ckpt")
    assert message.startswith("unknown key method.meta_checkpoint='other/last.ckpt'")
    validate(compose_train("method=metasnip", "method.meta_checkpoint=other/last.ckpt"))


def test_a_part_switched_off_or_swapped_by_its_target_validates():
    """The regularizer is a _target_ node: null switches it off, L1 swaps it in."""
    validate(compose_train("method.regularizer=null"))
    validate(compose_train("method.regularizer._target_=mglightning.federated.prox.L1.for_network"))


def test_every_target_parameter_range_is_read_from_its_annotation():
    """The walker's rules for a part are the ones annotated beside its parameters: a value the
    annotation refuses is refused, whichever part it belongs to."""
    from mglightning.constraints import parameter_rules
    from mglightning.federated.local import PerFedAvg
    rules = parameter_rules(PerFedAvg)
    assert set(rules) == {"steps", "alpha", "beta", "batch_size", "hessian_free", "hessian",
                          "delta"}
    assert not rules["delta"].check(0) and rules["delta"].check(1e-3)

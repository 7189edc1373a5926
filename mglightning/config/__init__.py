"""Config validation before any work starts: unknown keys, wrong types, out-of-range values.

Every problem ends in one :class:`ConfigError` whose one-line message names the key, the value
and what is allowed; ``python -m mglightning.train`` prints it without a traceback.

:func:`validate` checks the composed tree in two passes, each rule stated once, so that a new
method, part or data set needs no edit here:

1. every key on its own (:mod:`.walker`): a key of a ``_target_`` node (backbone, data set
   loader, partitioner, local solver, server step, regularizer, adaptation rule, logger)
   against the parameters of what it names and their ``Annotated`` rules; any other key against
   the config files (:mod:`.files`) and the ranges of :data:`~.rules.RULES`;
2. then keys against each other (:mod:`.cross_checks`): K and the fault-injected nodes against
   the training nodes, gated layers against the backbone, Trainer arguments the run sets.

Hydra itself already rejects ``key=value`` for a key the composed config lacks; this catches
what Hydra lets through: ``+key=value``, keys an experiment file adds, types and ranges.

Every config is composed from :data:`CONF_DIR`, so importing this package registers the
resolver ``${mg.fingerprint:}`` of ``conf/train.yaml``'s run name
(:func:`mglightning.run.identity.register_resolver`).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mglightning.config.cross_checks import TRAINER_ARGS_SET_BY_RUN, cross_key_problems
from mglightning.config.files import CONF_DIR, PACKAGED_CONF_DIR, SOURCE_CONF_DIR, known_kinds
from mglightning.config.rules import RULES, out_of_range
from mglightning.config.walker import walk
from mglightning.errors import ConfigError, one_line
from mglightning.run.identity import register_resolver

__all__ = ["CONF_DIR", "PACKAGED_CONF_DIR", "RULES", "SOURCE_CONF_DIR",
           "TRAINER_ARGS_SET_BY_RUN", "ConfigError", "validate"]

# Top-level blocks that belong to other entry points (which check them), and Hydra's own node
# (present when composed with return_hydra_config=True).
IGNORED_TOP_KEYS = {"hydra", "reproduce"}

register_resolver()


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every problem of a composed train config on one line;
    return silently when every key is known, typed and in range, and the keys agree."""
    values = _resolved(cfg)
    problems = [*walk(values, known_kinds(values)), *out_of_range(values)]
    if not problems:
        problems = list(cross_key_problems(values))
    if problems:
        raise ConfigError("; ".join(problems))


def _resolved(cfg: DictConfig) -> dict:
    checked = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in IGNORED_TOP_KEYS])
    try:
        return OmegaConf.to_container(checked, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(f"{key}: cannot be resolved ({one_line(error)})") from error

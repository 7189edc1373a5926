"""The config files: where they are, the resolver they use, and the keys and kinds they declare.

A key outside a ``_target_`` node is known when a config file has it, and its kind is the kind
of its value there (:func:`known_kinds`): ``conf/train.yaml`` for the top level, and for a
group (``method.*``) the chosen option file with the files it extends, so that a method's key
is refused under another method.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mglightning.targets import LABEL_KEY

# Inside the package where a wheel put them (setup.py ships conf/ as mglightning/conf), else the
# top-level conf/ of a source checkout or an editable install.
PACKAGED_CONF_DIR = Path(str(resources.files("mglightning") / "conf"))
SOURCE_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONF_DIR = PACKAGED_CONF_DIR if PACKAGED_CONF_DIR.is_dir() else SOURCE_CONF_DIR

# ``${not:${deterministic}}`` in conf/train.yaml: cudnn autotuning on unless deterministic.
OmegaConf.register_new_resolver("not", lambda value: not value, replace=True)


def known_kinds(values: Mapping) -> dict[str, set[str]]:
    """``{dotted key: kinds of its value}`` for this config: ``conf/train.yaml``'s keys, and
    for each group the keys of the chosen option (the option file named by the node's
    ``name``, with the files it extends); all options' keys where no file has that name."""
    kinds = dict(_train_kinds())
    for group in _groups():
        label = (values.get(group) or {}).get(LABEL_KEY) if isinstance(
            values.get(group), Mapping) else None
        option_file = CONF_DIR / group / f"{label}.yaml"
        if isinstance(label, str) and option_file.is_file():
            kinds |= _option_kinds(group, label)
        else:
            for option in sorted(CONF_DIR.joinpath(group).glob("*.yaml")):
                for key, option_kinds in _option_kinds(group, option.stem).items():
                    kinds.setdefault(key, set()).update(option_kinds)
    return kinds


def options_with(group: str, path: str) -> list[str]:
    """The options of ``group`` whose files (with those they extend) have the key ``path``."""
    return [option.stem for option in sorted(CONF_DIR.joinpath(group).glob("*.yaml"))
            if path in _option_kinds(group, option.stem)]


def kind_of(value) -> str:
    """A value's kind as the config files give it: int, float, bool, str, list, mapping,
    null, or any (an interpolation, whose target is checked)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "any" if "${" in value else "str"
    if isinstance(value, list):
        return "list"
    return "mapping"


@cache
def _groups() -> tuple[str, ...]:
    train = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    return tuple(_node_groups(train.get("defaults", [])))


@cache
def _train_kinds() -> dict[str, set[str]]:
    train = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml"), resolve=False)
    train.pop("defaults", None)
    train.pop("hydra", None)
    kinds = {group: {"mapping"} for group in _groups()}
    _collect_kinds(train, "", kinds)
    return kinds


@cache
def _option_kinds(group: str, option: str) -> dict[str, set[str]]:
    """The keys of ``conf/<group>/<option>.yaml`` and of the options it extends."""
    kinds: dict[str, set[str]] = {}
    tree = OmegaConf.to_container(_option_tree(group, option), resolve=False)
    _collect_kinds(tree, f"{group}.", kinds)
    return kinds


def _option_tree(group: str, option: str) -> DictConfig:
    """An option file with the files it extends merged under it, without its defaults list."""
    loaded = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    merged = OmegaConf.create()
    for base in loaded.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            merged = OmegaConf.merge(merged, _option_tree(group, base))
    own = OmegaConf.masked_copy(loaded, [key for key in loaded if key != "defaults"])
    return OmegaConf.merge(merged, own)


def _node_groups(defaults: list) -> list[str]:
    """Config groups of the defaults list that become a node (not ``_self_``, not the
    ``_global_`` experiment files, which only override)."""
    groups = []
    for entry in defaults:
        if isinstance(entry, Mapping):
            for key, choice in entry.items():
                if choice is not None:
                    groups.append(key.split()[-1])
    return groups


def _collect_kinds(node: Mapping, prefix: str, kinds: dict[str, set[str]]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        kinds.setdefault(path, set()).add(kind_of(value))
        if isinstance(value, dict):
            _collect_kinds(value, f"{path}.", kinds)

"""Run names (and so fingerprints) of many configs, as the code composed them when the file
``fixtures/run_names.json`` was written: a refactoring that changes one would orphan every run
folder made with that config, so it must come with a migration (or say why none is needed),
never by accident; ``fixtures/write_run_names.py`` rewrites the record when it is meant to."""

from __future__ import annotations

import json
from pathlib import Path

from mglightning.build import compose_config

RUN_NAMES = json.loads((Path(__file__).parent / "fixtures" / "run_names.json").read_text())


def test_every_recorded_config_keeps_its_run_name() -> None:
    changed = {overrides: (name, str(compose_config(overrides.split()).run_name))
               for overrides, name in RUN_NAMES.items()}
    changed = {key: names for key, names in changed.items() if names[0] != names[1]}
    assert not changed, f"{len(changed)} run names changed, e.g. {next(iter(changed.items()))}"


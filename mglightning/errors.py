"""The package's bad-input error, in a module of its own: code that must import little (a Flower
ClientApp, started afresh for every message) raises it without importing the config validation
of :mod:`mglightning.config`, which reaches Lightning."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the remedy."""

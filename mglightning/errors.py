"""The package's bad-input error and its one-line messages, in a module of its own: code that
must import little (a Flower ClientApp, started afresh for every message) raises it without
importing the config validation of :mod:`mglightning.config`, which reaches Lightning."""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the remedy."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (torchvision's and Hydra's span several), naming
    the override that Hydra could not parse, if that is what it says."""
    message = " ".join(str(error).split()) or type(error).__name__
    override = getattr(error, "override", None)  # Hydra's OverrideParseException
    return f"{override}: {message}" if isinstance(override, str) else message

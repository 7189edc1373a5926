"""MetaGater in PyTorch Lightning. Importing the package registers the config resolver
``${mg.fingerprint:}`` that run names use (:mod:`mglightning.identity`)."""

from mglightning import identity as _identity  # noqa: F401

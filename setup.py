"""The package's layout, which pyproject.toml cannot state: the top-level ``conf/`` ships inside
the package as ``mglightning/conf``, so that a wheel or ``pip install .`` carries its
configs; a source checkout and an editable install read ``conf/`` where it is
(``mglightning.config.CONF_DIR``). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

setup(
    packages=find_packages(include=["mglightning*"])
    + [f"mglightning.{folder}" for folder in find_namespace_packages(include=["conf*"])],
    package_dir={"mglightning.conf": "conf"},
    package_data={"mglightning.conf": ["**/*.yaml"]},
)

"""MetaGater in PyTorch Lightning. Importing the package registers the config resolver
``${mg.fingerprint:}`` that run names use (:mod:`mglightning.run.identity`).

It also asks PyTorch, before torch is imported, to back CPU tensors of 2 MB and more with
transparent huge pages (``THP_MEM_ALLOC_ENABLE``, read once per process): a target's fast
adaptation makes a few hundred MB of fresh activations, and faulted in 4 KB pages they made
an evaluation on the CIFAR-10 stand-in slower (README, BENCHMARKS.md). The results
are the same bits either way; ``THP_MEM_ALLOC_ENABLE=0`` in the environment keeps 4 KB pages.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from mglightning.run import identity as _identity  # noqa: E402,F401

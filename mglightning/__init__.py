"""MetaGater in PyTorch Lightning.

Importing the package imports nothing else: a Flower ClientApp whose node has a worker imports
numpy and flwr alone (:mod:`mglightning.flower.client_app`), and the config resolver that run
names use is registered where configs are composed (:mod:`mglightning.config`).

It asks PyTorch, before torch is imported, to back CPU tensors of 2 MB and more with
transparent huge pages (``THP_MEM_ALLOC_ENABLE``, read once per process): a target's fast
adaptation makes a few hundred MB of fresh activations, and faulted in 4 KB pages they made
an evaluation on the CIFAR-10 stand-in slower (README, BENCHMARKS.md). The results
are the same bits either way; ``THP_MEM_ALLOC_ENABLE=0`` in the environment keeps 4 KB pages.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

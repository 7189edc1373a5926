"""Federated meta-learning across real Flower clients (the ``flower`` extra, flwr 1.41).

A ``ServerApp`` (:mod:`.server_app`) runs our server step, unchanged, behind a Flower Message
API strategy (:mod:`.strategy`); a ``ClientApp`` (:mod:`.client_app`) runs our local solver on
its node's data shard (:mod:`.shard`, :mod:`.client_node`), or has the node's worker run it
(:mod:`.node_worker`, over the socket protocol of :mod:`.wire`), which keeps torch and the node
across the fresh process a SuperNode starts for every message. The apps speak the record
format of :mod:`.protocol`; the ServerApp composes the config (:mod:`.run_config`) and sends
each node the resolved parts it reads, from which it builds its node as the in-process learner
does (:mod:`mglightning.federated.training_node`). :mod:`.simulate` runs the app on Flower's
simulation engine. Same seed, same rounds: the meta-model x_ag equals the in-process run's bit
for bit. Nothing here is imported by the rest of the package, so flwr stays optional.
"""

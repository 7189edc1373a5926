"""The Flower strategy against the in-process learner: same seed, same rounds, same x and x_ag
bit for bit — with replies arriving in any order, with failing nodes, across a restart. The
ClientApp is called in this process through a stand-in Grid, so this runs in the default suite.
"""

import random
import shlex

import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")

import torch  # noqa: E402
from conftest import TINY  # noqa: E402
from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from mglightning.build import build_datamodule, build_learner  # noqa: E402
from mglightning.config import ConfigError  # noqa: E402
from mglightning.federated.streams import round_generator  # noqa: E402
from mglightning.federated.training_node import node_config  # noqa: E402
from mglightning.flower.client_app import make_client_app  # noqa: E402
from mglightning.flower.protocol import node_config_record, query_message  # noqa: E402
from mglightning.flower.run_config import compose_config  # noqa: E402
from mglightning.flower.shard import load_node_shard  # noqa: E402
from mglightning.flower.strategy import (  # noqa: E402
    FederatedRoundStrategy,
    PromptGrid,
    ServerState,
    discover_nodes,
)
from mglightning.run.identity import data_fingerprint  # noqa: E402

ROUNDS = 3
FLOWER_NODE_IDS = [9001, 17, 4242, 5, 77, 123456, 3, 64, 2048, 11, *range(30_000, 30_040)]  # any


@pytest.fixture(autouse=True)
def task_identity():
    """The identity Flower's runtimes give the ServerApp's process before messages are made."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None


class LocalGrid:
    """A stand-in for Flower's Grid (the public methods PromptGrid calls), with Flower nodes
    in this process: node ``node_ids[p]`` runs ``client_app`` as training node p; replies come
    back shuffled, at most two a pull, a raising ClientApp as an error reply (as in Flower)."""

    def __init__(self, client_app, node_ids: list[int], shuffle_seed: int = 0,
                 partitions: list[int] | None = None) -> None:
        self.client_app, self.node_ids = client_app, node_ids
        self.partitions = partitions or list(range(len(node_ids)))
        self.shuffle = random.Random(shuffle_seed)
        self.trained_nodes: list[list[int]] = []
        self.pending: list[Message] = []
        self.pulls = 0

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trained_nodes.append([message.metadata.dst_node_id for message in messages])
        for message in messages:  # Flower's Grid names a pushed message by its object id
            message.metadata.__dict__["_message_id"] = message.object_id
            self.pending.append(self.reply(message))
        self.shuffle.shuffle(self.pending)
        return [message.metadata.message_id for message in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [reply for reply in self.pending
                 if reply.metadata.reply_to_message_id in message_ids][:2]
        for reply in ready:
            self.pending.remove(reply)
        return ready

    def reply(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        partition = self.partitions[self.node_ids.index(node_id)]
        context = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition},
                          state=RecordDict(), run_config={})
        try:
            return self.client_app(message, context)
        except Exception as error:  # what Flower's runtimes do with a raising ClientApp
            return Message(Error(code=2, reason=str(error)), reply_to=message)


def overrides(tmp_path, *extra: str) -> str:
    return shlex.join([*TINY, f"output_root={tmp_path}", f"data_root={tmp_path / 'data'}",
                       f"rounds={ROUNDS}", *extra])


def in_process(cfg, rounds: int):
    """The learner after ``rounds`` rounds of ``FederatedMetaLearner.run_round``, and their
    failed-client counts."""
    datamodule = build_datamodule(cfg)
    learner = build_learner(cfg, datamodule)
    failed = [learner.run_round(datamodule.train_clients)["failed_clients"]
              for _ in range(rounds)]
    return learner, failed


def flower_learner(cfg):
    datamodule = build_datamodule(cfg)
    num_nodes = len(datamodule.train_clients)
    return build_learner(cfg, datamodule), FLOWER_NODE_IDS[:num_nodes]


def sent_node_config(cfg) -> dict:
    """The config a ServerApp sends its nodes: the config's parts, with its data's fingerprint."""
    data = build_datamodule(cfg).data
    return node_config(cfg, data_fingerprint(data.images, data.labels))


def run_flower(text: str, rounds: int, state: ServerState | None = None, shuffle_seed: int = 0):
    cfg = compose_config(text)
    learner, node_ids = flower_learner(cfg)
    if state is not None:
        state.restore(learner)
    grid = PromptGrid(LocalGrid(make_client_app(), node_ids, shuffle_seed), poll_seconds=0.0)
    strategy = FederatedRoundStrategy(learner, discover_nodes(grid, len(node_ids), 1.0),
                                      cfg.rounds, state)
    result = strategy.start(grid, strategy.state_arrays(), num_rounds=rounds,
                            train_config=node_config_record(sent_node_config(cfg)))
    return learner, grid, result


def assert_same_state(flower, reference) -> None:
    assert int(flower.rounds_done) == int(reference.rounds_done)
    assert torch.equal(flower.x, reference.x)
    assert torch.equal(flower.x_ag, reference.x_ag)


# The ClientApp builds solver, schedules and faults from the config the server sends: each
# solver, and gate noise and τ that change over the rounds, must arrive as the learner has them.
@pytest.mark.parametrize("method", [
    ["method=metagater"],
    ["method=fedavg"],
    ["method=perfedavg_hf"],
    ["method=metagater", "method.gate_noise=annealed", "method.temperature_end=0.5"],
], ids=["metagater", "fedavg", "perfedavg_hf", "annealed-noise-and-tau"])
def test_flower_rounds_equal_in_process_rounds_bit_for_bit(tmp_path, method):
    text = overrides(tmp_path, *method, "method.clients_per_round=4")
    reference, _ = in_process(compose_config(text), ROUNDS)
    flower, grid, result = run_flower(text, ROUNDS)
    assert_same_state(flower, reference)
    assert not torch.equal(reference.x_ag, flower_learner(compose_config(text))[0].x_ag)
    assert torch.equal(result.arrays.to_torch_state_dict()["x_ag"], reference.x_ag)
    # exactly K messages a round, to the nodes the round's generator chose, in its order
    cfg = compose_config(text)
    for round_index, sent in enumerate(grid.trained_nodes, start=1):
        chosen = reference.sample_clients(len(grid.node_ids),
                                          round_generator(cfg.seed, round_index))
        assert sent == [grid.node_ids[partition] for partition in chosen]


def test_reply_order_does_not_change_the_result(tmp_path):
    text = overrides(tmp_path)
    first = run_flower(text, 2, shuffle_seed=1)[0]
    second = run_flower(text, 2, shuffle_seed=2)[0]
    assert_same_state(first, second)


def test_failed_nodes_are_left_out_and_counted_as_in_process(tmp_path):
    cfg = compose_config(overrides(tmp_path))
    datamodule = build_datamodule(cfg)
    chosen = build_learner(cfg, datamodule).sample_clients(
        len(datamodule.train_clients), round_generator(cfg.seed, 2))
    failing = datamodule.train_clients[chosen[1]].node_id
    text = overrides(tmp_path, f"faults.inject.clients=[{failing}]", "faults.inject.rounds=[2]")
    reference, failed = in_process(compose_config(text), ROUNDS)
    flower, _, result = run_flower(text, ROUNDS)
    assert failed == [0, 1, 0]
    assert [result.train_metrics_clientapp[r]["failed-clients"] for r in (1, 2, 3)] == failed
    assert_same_state(flower, reference)


def test_a_round_where_every_node_fails_leaves_the_state(tmp_path):
    training = build_datamodule(compose_config(overrides(tmp_path))).train_clients
    every_node = "[" + ",".join(str(client.node_id) for client in training) + "]"
    text = overrides(tmp_path, f"faults.inject.clients={every_node}", 'faults.inject.kind="nan"',
                     "faults.inject.rounds=[2]")
    reference, failed = in_process(compose_config(text), ROUNDS)
    flower, _, _ = run_flower(text, ROUNDS)
    assert failed[1] == 4 and int(flower.failed_rounds_in_a_row) == 0
    assert_same_state(flower, reference)


def test_a_restarted_server_resumes_from_its_saved_state(tmp_path):
    text = overrides(tmp_path, "checkpoint.every_n_rounds=2")
    state = ServerState(tmp_path / "server_state.ckpt", every_n_rounds=2)
    run_flower(text, 2, state)  # killed after round 2: the state of round 2 is on disk
    resumed, _, _ = run_flower(text, ROUNDS - 2, state)
    reference, _ = in_process(compose_config(text), ROUNDS)
    assert_same_state(resumed, reference)


def test_a_node_shard_draws_the_batches_of_the_pooled_data(tmp_path):
    cfg = compose_config(overrides(tmp_path))
    pooled = build_datamodule(cfg).train_clients[3]
    shard = load_node_shard(sent_node_config(cfg), 3)
    assert shard.client.node_id == pooled.node_id
    first = shard.client.sample_support_batch(8, torch.Generator().manual_seed(5))
    again = pooled.sample_support_batch(8, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(shard.client.query_set(), pooled.query_set(),
                                                 strict=True))


def test_partition_ids_that_do_not_cover_the_training_nodes_are_refused():
    twice_zero = [0, 1, 2, 3, 4, 5, 6, 0]  # training node 7 missing, 0 held twice
    grid = PromptGrid(LocalGrid(make_client_app(), FLOWER_NODE_IDS[:8], partitions=twice_zero))
    with pytest.raises(ConfigError, match="partition-id"):
        discover_nodes(grid, 8, 1.0)


def test_a_round_takes_its_replies_as_they_come_and_stops_at_its_timeout(tmp_path):
    """PromptGrid pulls until the last reply is in (here two a pull), not 3 s a pull, and
    returns what it has once ``timeout`` has passed."""
    cfg = compose_config(overrides(tmp_path))
    node_ids = flower_learner(cfg)[1]
    local = LocalGrid(make_client_app(), node_ids)
    grid = PromptGrid(local, poll_seconds=0.0)
    replies = grid.send_and_receive([query_message(node_id) for node_id in node_ids[:5]])
    assert sorted(reply.metadata.src_node_id for reply in replies) == sorted(node_ids[:5])
    assert local.pulls == 3  # 2 + 2 + 1

    class Silent(LocalGrid):
        def pull_messages(self, message_ids):
            self.pulls += 1
            return []

    silent = Silent(make_client_app(), node_ids)
    assert PromptGrid(silent, poll_seconds=0.01).send_and_receive(
        [query_message(node_ids[0])], timeout=0.05) == []
    assert 2 <= silent.pulls <= 10

"""The client runner that trains a round's sampled clients on Flower SuperNodes.

:class:`FlowerClients` is what :class:`~fedlora_cli.federation.engine.FederatedRun` calls
instead of training in-process: it sends one *train* message per sampled client to the SuperNode
holding that client's partition (``node_of_client``, from the start-up handshake in
:mod:`.server_app`), waits for the replies through the ``Grid``, and returns the results of the
clients that answered. A client that does not answer (its node is gone, its ClientApp raised, or
the round timeout passed) is left out; the engine aggregates the others if at least
``federation.min_clients_per_round`` answered.

**Timeouts and accounting.** Without ``round_timeout`` the round waits until every sampled node
has answered or the SuperLink reports it unavailable (Flower marks a node offline after it
misses its heartbeats, about a minute), so every update that reaches the server is counted.
With ``round_timeout`` a client may still answer after the round moved on: it did train and
its update did reach the SuperLink, so before the next round the runner pulls such late replies
and charges their steps to the accountant (their tensors are discarded). A reply that arrives
after the *last* round's timeout is not charged; leave ``round_timeout`` unset where that
matters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from fedlora_cli.federation.client import LocalResult
from fedlora_cli.federation.clients import ClientTask
from fedlora_cli.flower import wire

if TYPE_CHECKING:
    from fedlora_cli.federation.engine import FederatedRun


class FlowerClients:
    def __init__(self, grid: Grid, node_of_client: dict[int, int], recipe_text: str, round_timeout: float | None = None):
        self.grid = grid
        self.node_of_client = dict(node_of_client)
        self.recipe_text = recipe_text
        self.round_timeout = round_timeout
        self.pending: dict[str, int] = {}  # message id -> client, sent but not answered in time

    def train(self, run: "FederatedRun", round_index: int, tasks: list[ClientTask]) -> dict[int, LocalResult]:
        self._charge_late_replies(run)
        global_arrays = ArrayRecord({k: v.detach().contiguous() for k, v in run.global_state.items()})
        base_arrays = None
        if run.method.modifies_base:
            base_arrays = ArrayRecord({m.name: m.base_weight.detach().contiguous() for m in run.method.modules})
        messages = [
            Message(
                wire.train_request(self.recipe_text, round_index, run.fed.local_steps, task, global_arrays, base_arrays),
                dst_node_id=self.node_of_client[task.client],
                message_type=MessageType.TRAIN,
            )
            for task in tasks
        ]
        replies = list(self.grid.send_and_receive(messages, timeout=self.round_timeout))
        # sending set each message's id; a reply names its message (an error reply made by the
        # SuperLink for a vanished node does not come from that node)
        client_of_message = {m.metadata.message_id: task.client for m, task in zip(messages, tasks)}
        results: dict[int, LocalResult] = {}
        for reply in replies:
            client = client_of_message.get(reply.metadata.reply_to_message_id)
            if client is None:
                continue
            if reply.has_error():
                run.reporter.note(f"round {round_index + 1}: client {client} failed: {reply.error.reason}")
                continue
            answered, result = wire.read_train_reply(reply.content)
            if answered != client:
                run.reporter.note(f"round {round_index + 1}: node of client {client} answered as client {answered}; ignored")
                continue
            results[client] = result
        answered_ids = {reply.metadata.reply_to_message_id for reply in replies}
        for message, task in zip(messages, tasks):
            client = task.client
            if message.metadata.message_id not in answered_ids:
                self.pending[message.metadata.message_id] = client
                run.reporter.note(f"round {round_index + 1}: client {client} did not answer within {self.round_timeout} s")
        return results

    def _charge_late_replies(self, run: "FederatedRun") -> None:
        """Charge the steps of clients whose reply came after their round's timeout."""
        if not self.pending:
            return
        for reply in self.grid.pull_messages(list(self.pending)):
            client = self.pending.pop(reply.metadata.reply_to_message_id, None)
            if client is None or reply.has_error():
                continue
            _, result = wire.read_train_reply(reply.content)
            run.charge(client, result.steps)
            run.reporter.note(f"client {client}: late reply, {result.steps} steps charged, update not used")

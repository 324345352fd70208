"""The client runner that trains a round's sampled clients on Flower SuperNodes.

:class:`FlowerClients` is the client runner (:mod:`fedlora_cli.federation.clients`) that the
round loop calls instead of training in-process: given the round's tasks and the global tensors
(and base weights for fedex/flora), it sends one *train* message per sampled client to the
SuperNode holding that client's partition (``node_of_client``, from the start-up handshake in
:func:`.serve.discover_clients`), waits for the replies through the ``Grid``, and returns the results of the
clients that answered. A client that does not answer (its node is gone, its ClientApp raised, or
the round timeout passed) is left out; the round loop aggregates the others if at least
``federation.min_clients_per_round`` answered.

**Timeouts and accounting.** Without ``round_timeout`` the round waits until every sampled node
has answered or the SuperLink reports it unavailable (Flower marks a node offline after it
misses its heartbeats, about a minute), so every update that reaches the server is counted.
With ``round_timeout`` a client may still answer after the round moved on: it did train and
its update did reach the SuperLink, so at the next round the runner pulls such late replies and
returns their steps (``ClientReplies.late_steps``) for the round loop to charge (their tensors
are discarded). A reply that arrives after the *last* round's timeout is not charged; leave
``round_timeout`` unset where that matters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from fedlora_cli.federation.clients import ClientReplies, ClientTask
from fedlora_cli.flower import wire
from fedlora_cli.methods.base import State


def arrays(state: State) -> ArrayRecord:
    return ArrayRecord({k: v.detach().contiguous() for k, v in state.items()})


class FlowerClients:
    def __init__(
        self, grid: Grid, node_of_client: dict[int, int], recipe_text: str, local_steps: int, round_timeout: float | None = None
    ):
        self.grid = grid
        self.node_of_client = dict(node_of_client)
        self.recipe_text = recipe_text
        self.local_steps = local_steps
        self.round_timeout = round_timeout
        self.pending: dict[str, int] = {}  # message id -> client, sent but not answered in time

    def train(self, round_index: int, tasks: list[ClientTask], global_state: State, base: State | None) -> ClientReplies:
        replies = self._late_replies()
        global_arrays, base_arrays = arrays(global_state), (arrays(base) if base is not None else None)
        messages = [
            Message(
                wire.train_request(self.recipe_text, round_index, self.local_steps, task, global_arrays, base_arrays),
                dst_node_id=self.node_of_client[task.client],
                message_type=MessageType.TRAIN,
            )
            for task in tasks
        ]
        answers = list(self.grid.send_and_receive(messages, timeout=self.round_timeout))
        # sending set each message's id; a reply names its message (an error reply made by the
        # SuperLink for a vanished node does not come from that node)
        client_of_message = {m.metadata.message_id: task.client for m, task in zip(messages, tasks)}
        device = next(iter(global_state.values())).device  # uploads arrive as CPU tensors
        for reply in answers:
            client = client_of_message.get(reply.metadata.reply_to_message_id)
            if client is None:
                continue
            if reply.has_error():
                replies.notes.append(f"round {round_index + 1}: client {client} failed: {reply.error.reason}")
                continue
            answered, result = wire.read_train_reply(reply.content)
            if answered != client:
                replies.notes.append(f"round {round_index + 1}: node of client {client} answered as client {answered}; ignored")
                continue
            replies.results[client] = replace(result, upload={k: v.to(device) for k, v in result.upload.items()})
        answered_ids = {reply.metadata.reply_to_message_id for reply in answers}
        for message, task in zip(messages, tasks):
            if message.metadata.message_id not in answered_ids:
                self.pending[message.metadata.message_id] = task.client
                replies.notes.append(f"round {round_index + 1}: client {task.client} did not answer within {self.round_timeout} s")
        return replies

    def _late_replies(self) -> ClientReplies:
        """No results yet: the steps of clients whose reply came after their round's timeout, to be charged."""
        late: Counter[int] = Counter()
        notes = []
        if self.pending:
            for reply in self.grid.pull_messages(list(self.pending)):
                client = self.pending.pop(reply.metadata.reply_to_message_id, None)
                if client is None or reply.has_error():
                    continue
                _, result = wire.read_train_reply(reply.content)
                late[client] += result.steps
                notes.append(f"client {client}: late reply, {result.steps} steps charged, update not used")
        return ClientReplies({}, dict(late), notes)

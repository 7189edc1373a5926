"""The floor's ClientApp: sends back the array it was sent, shifted by its position + 1.

It imports numpy and flwr alone, so one of its messages costs a SuperNode what any Flower
ClientApp costs: the process, flwr's imports, the FAB, and the array's round trip through
Flower's records. The shift makes each node's reply new bytes, as our nodes' replies are:
Flower keeps arrays by content (an object's id is its hash) and does not move bytes the
SuperLink already holds, so a plain echo, or two equal replies, would travel for free.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

ARRAYS, CONFIG = "arrays", "config"

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """The arrays of ``message`` plus its config's ``position`` + 1, as a reply."""
    shift = np.float32(int(message.content[CONFIG]["position"]) + 1)
    replied = ArrayRecord({name: Array(array.numpy() + shift)
                           for name, array in message.content[ARRAYS].items()})
    return Message(content=RecordDict({ARRAYS: replied}), reply_to=message)

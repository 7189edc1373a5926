"""What a gated network tells the code that reads it: its gate points and its MAC ops.

A backbone of any topology describes itself with these plain records
(:meth:`~mglightning.models.network.GatedNetwork.describe`); the MAC counts, the export with
always-off channels removed, both SNIPs, the gating measures and the Group Lasso groups read
the description, never the backbone's layers, so that a new topology is one module.

A **gate point** is a set of channels that one gate may switch (METHOD.md §1): the output
channels of its producers, read by its readers. Every block has one, gated or not (structured
SNIP prunes channels at ungated points). A point is named by its 1-based block number, as
``model.gated_layers`` and the row keys (``sparsity_layer3``) name it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reader:
    """A parameter reading a gate point's channels along dim 1: ``area`` consecutive columns
    per channel (a linear layer reading a flattened H×W map: H·W; otherwise 1)."""

    parameter: str
    area: int = 1


@dataclass(frozen=True)
class GatePoint:
    """``channels`` channels whose entry c along dim 0 of every ``producers`` parameter
    (filters, biases, a norm's affine entries) makes channel c: zeroed, they switch it off for
    every input. ``gate`` names the :class:`~mglightning.models.gate.ChannelGate` deciding
    them (None: ungated); row c of its last Linear with bias entry c is channel c's Group
    Lasso group (METHOD.md §3)."""

    layer: int  # 1-based block number
    channels: int
    producers: tuple[str, ...]
    readers: tuple[Reader, ...]
    gate: str | None = None

    @property
    def group(self) -> tuple[str, str]:
        """The gate's last Linear (weight, bias): row c and entry c are channel c's group."""
        if self.gate is None:
            raise ValueError(f"gate point {self.layer} carries no gate")
        return f"{self.gate}.out.weight", f"{self.gate}.out.bias"


@dataclass(frozen=True)
class MacOp:
    """A conv or linear op of the backbone (its ``weight`` parameter): for one input,
    ``in_channels × out_channels × per_pair`` MACs, ``per_pair`` being the kernel area times
    the output positions (a linear layer reading a flattened map: H·W). Executed, the gate
    points ``in_point`` / ``out_point`` (0-based; None: every channel computed) set how many
    input and output channels are active."""

    weight: str
    in_channels: int
    out_channels: int
    per_pair: int
    in_point: int | None = None
    out_point: int | None = None


@dataclass(frozen=True)
class GateOp:
    """The MLP of the gate at point ``point``: it reads ``in_channels`` channels
    (``in_point`` sets how many are active), ``inputs_per_channel`` values each (1 when it
    pools a map, H·W when it reads it flattened), into ``hidden`` units, then one logit per
    channel of its point, ``outputs`` (every one computed). Executed MACs only."""

    point: int
    in_point: int | None
    in_channels: int
    inputs_per_channel: int
    hidden: int
    outputs: int


@dataclass(frozen=True)
class NetworkDescription:
    """The gate points (one per block, in order) and every op that costs MACs, in forward
    order (a gate right after the op it gates)."""

    points: tuple[GatePoint, ...]
    ops: tuple[MacOp | GateOp, ...]

    @property
    def gated(self) -> list[int]:
        """0-based indices of the points that carry a gate."""
        return [index for index, point in enumerate(self.points) if point.gate is not None]

    @property
    def backbone_ops(self) -> list[MacOp]:
        """The conv and linear ops of the backbone, the head's included (no gate MLP)."""
        return [op for op in self.ops if isinstance(op, MacOp)]

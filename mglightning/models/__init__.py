"""Gates, backbones and the gated network: plain ``nn.Module``s (METHOD.md §1), and the
description of their gate points that every reader of a network works from."""

from mglightning.models.backbones import Backbone, build_network, width_for_macs
from mglightning.models.channels import ChannelSets, prune_at_rest
from mglightning.models.cost import ForwardCost, dense_macs, forward_cost
from mglightning.models.gate import ChannelGate, binarize
from mglightning.models.gate_points import GateOp, GatePoint, MacOp, NetworkDescription, Reader
from mglightning.models.network import GatedNetwork, GatedOutput, LayerSpec, LayerStack
from mglightning.models.resnet import ResidualBackbone, ResNet

__all__ = [
    "Backbone",
    "ChannelGate",
    "ChannelSets",
    "ForwardCost",
    "GateOp",
    "GatePoint",
    "GatedNetwork",
    "GatedOutput",
    "LayerSpec",
    "LayerStack",
    "MacOp",
    "NetworkDescription",
    "Reader",
    "ResNet",
    "ResidualBackbone",
    "binarize",
    "build_network",
    "dense_macs",
    "forward_cost",
    "prune_at_rest",
    "width_for_macs",
]

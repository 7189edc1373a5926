"""Gates, backbones and the gated network: plain ``nn.Module``s (SPEC §1)."""

from mglightning.models.backbones import Backbone, build_network
from mglightning.models.cost import ForwardCost, forward_cost
from mglightning.models.gate import ChannelGate, binarize
from mglightning.models.network import GatedNetwork, LayerSpec

__all__ = [
    "Backbone",
    "ChannelGate",
    "ForwardCost",
    "GatedNetwork",
    "LayerSpec",
    "binarize",
    "build_network",
    "forward_cost",
]

"""Model zoo: residual networks built from JSON architecture specs.

>>> from resprune import models
>>> net = models.create("resnet56", num_classes=10, shortcut="A")
>>> spec = models.spec_of(net)           # JSON-serialisable
>>> smaller = models.build(spec)         # same architecture, fresh weights
"""

from .blocks import BasicBlock, Bottleneck, PadShortcut, ResidualUnit
from .resnet import ResNet, build, spec_of, validate_spec
from .zoo import create, describe_models, list_models, model_spec, register

__all__ = [
    "BasicBlock", "Bottleneck", "PadShortcut", "ResidualUnit", "ResNet", "build", "create",
    "describe_models", "list_models", "model_spec", "register", "spec_of", "validate_spec",
]

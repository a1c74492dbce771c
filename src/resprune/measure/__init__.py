"""Measurements of a model: parameters, MACs, depth, latency and accuracy.

>>> from resprune import create, measure
>>> net = create("resnet56")
>>> measure.count_params(net), measure.count_macs(net, (3, 32, 32)), measure.depth(net)
(853018, 125485696, 56)
"""

from .accuracy import evaluate
from .batchnorm import batchnorm_statistics, recalibrate_batchnorm
from .counts import count_macs, count_params, depth
from .latency import latency
from .profile import profile
from .summary import accuracy, measure_model, sizes

__all__ = ["accuracy", "batchnorm_statistics", "count_macs", "count_params", "depth",
           "evaluate", "latency", "measure_model", "profile", "recalibrate_batchnorm", "sizes"]

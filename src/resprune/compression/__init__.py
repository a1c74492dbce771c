"""``resprune.compress()``: depth and width pruning in one resumable pipeline.

See :mod:`resprune.compression.pipeline` for the stages and
:mod:`resprune.compression.summary` for the fields of ``summary.json``.
"""

from .config import DEFAULT_STAGES, STAGES, CompressConfig
from .pipeline import CompressResult, compress, vacl_share

__all__ = ["DEFAULT_STAGES", "STAGES", "CompressConfig", "CompressResult", "compress",
           "vacl_share"]

"""resprune: depth (Network Implosion) and width (VACL) pruning of residual networks.

The pipelines, each writing a resumable run directory (the same ones the CLI writes):

- :func:`compress` (:class:`CompressConfig`): implosion, VACL and a fine-tune in one go;
- :func:`run_implosion` / :func:`implode` (:class:`ImplosionConfig`): depth;
- :func:`run_vacl` (:class:`VaclConfig`): width.

:func:`read_config` reads a command line ``--config`` YAML file into those configs.
"""

__version__ = "0.1.0"  # first: the modules below record it in what they write

from . import importing  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .compression import CompressConfig, CompressResult, compress  # noqa: E402
from .configfile import FileConfig, read_config  # noqa: E402
from .errors import UserError  # noqa: E402
from .export import deploy  # noqa: E402
from .implosion import ImplosionConfig, implode, run_implosion  # noqa: E402
from .importing import from_state_dict  # noqa: E402
from .models import build, create, list_models, spec_of  # noqa: E402
from .vacl import VaclConfig  # noqa: E402
from .vacl import run_pipeline as run_vacl  # noqa: E402

__all__ = ["CompressConfig", "CompressResult", "FileConfig", "ImplosionConfig", "UserError",
           "VaclConfig", "__version__", "build", "compress", "create", "deploy",
           "from_state_dict", "implode", "importing", "list_models", "load", "read_config",
           "run_implosion", "run_vacl", "save", "spec_of"]

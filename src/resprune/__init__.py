"""resprune: depth (Network Implosion) and width (VACL) pruning of residual networks."""

from .checkpoint import load, save
from .errors import UserError
from .models import build, create, list_models, spec_of

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "build", "create", "list_models", "load", "save", "spec_of"]

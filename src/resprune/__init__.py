"""resprune: depth (Network Implosion) and width (VACL) pruning of residual networks."""

from . import importing  # noqa: E402  (after the model zoo it builds on)
from .checkpoint import load, save
from .errors import UserError
from .importing import from_state_dict
from .models import build, create, list_models, spec_of

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "build", "create", "from_state_dict", "importing",
           "list_models", "load", "save", "spec_of"]

"""The model zoo: every network of the seed documents plus the flagship, behind one registry.

Importing this package registers every model (each module registers its own on import).
"""

from agegender.models import chained, flagship, levi_hassner, resnet, two_branch, vu, zhu  # noqa: F401
from agegender.models.registry import create_model, get_config, list_models, register_model

__all__ = ["create_model", "get_config", "list_models", "register_model"]

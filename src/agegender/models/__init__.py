"""The model zoo: every network of the seed documents plus the flagship, behind one registry.

Importing this package imports no torch: the registry lists the models and their configs from a static catalog
(``_catalog``), and ``create_model`` imports the module that builds a model (which registers its builder) on
first use.
"""

from agegender.models.registry import config_of, create_model, get_config, list_models, register_model, with_config

__all__ = ["config_of", "create_model", "get_config", "list_models", "register_model", "with_config"]

"""Built-in plugins: ordinary pluggy plugins, registered like third-party ones.

Each module here is one plugin (see ``lauf_dvc.plugins.BUILTIN_PLUGINS``); none
imports DVC at import time.
"""

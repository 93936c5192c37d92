"""``python -m lauf_dvc`` is ``lauf-dvc``."""

import os
import sys

# ``python -m`` put the current directory first on the import path: in a repository, a
# user's copy.py or logging.py would shadow the standard library for everything
# imported from here on. lauf_dvc itself is already imported; drop the entry.
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from lauf_dvc.cli import entry

entry()

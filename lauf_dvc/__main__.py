"""``python -m lauf_dvc`` is ``lauf-dvc``."""

import sys

from lauf_dvc.cli import main

sys.exit(main())

"""``python -m gradstore``: the same as the ``gradstore`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

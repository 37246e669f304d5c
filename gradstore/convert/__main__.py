"""``python -m gradstore.convert SRC... DEST``: the same as ``gradstore-convert``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m gradstore``: the same as the ``gradstore`` command."""
from .entry import gradstore

if __name__ == "__main__":
    gradstore()

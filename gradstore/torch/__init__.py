"""The torch adapter: the only place in gradstore that imports torch at module level."""

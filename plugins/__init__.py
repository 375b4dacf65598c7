"""Built-in diffcore plugins."""

"""Built-in data files (prompt sets)."""

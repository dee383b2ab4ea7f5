"""Analysis tools that reproduce the papers figures."""

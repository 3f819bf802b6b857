"""OpenAnomaly test suite (a regular package: some libraries install a top-level `tests` package)."""

"""The package version, in one place (pyproject.toml states the same number for the installer)."""

__version__ = "0.3.1"

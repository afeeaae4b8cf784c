"""The package version: one statement, read by the package, its exports and its service."""

__version__ = "0.1.0"

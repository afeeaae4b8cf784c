"""agegender: age and gender for every face in a photo."""

__version__ = "0.1.0"

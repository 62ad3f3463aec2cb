"""ragline command line and local stack runner."""

__version__ = "0.1.0"

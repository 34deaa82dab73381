"""remanence: a forensic leak-testing harness for secret-wiping code."""

__version__ = "0.1.0"

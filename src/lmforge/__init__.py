"""lmforge: language models from first principles to production."""

__version__ = "0.1.0"

"""The `lmforge` command line: one verb per module, each a thin layer over a library function."""

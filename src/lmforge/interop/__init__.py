"""Interop with other ecosystems: Hugging Face model directories (`lmforge export` / `lmforge import`)."""

from __future__ import annotations

from lmforge.interop.families import FAMILIES, Family, Head, Rule
from lmforge.interop.hf import export_hf, import_hf

__all__ = ["FAMILIES", "Family", "Head", "Rule", "export_hf", "import_hf"]

"""The data the tests replay and check against, carried in the repository (see README.md)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent

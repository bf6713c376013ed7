"""Fixes that recover accuracy, each a transformation the engine really carries.

A registry name → fix; configs name them in ``"fixes": [...]``. Empty in this version:
cross-layer equalization, bias correction, SmoothQuant, AdaRound and QAT are planned
(see DESIGN.md step 7); a config that names one is rejected with the list of available fixes.
"""

from __future__ import annotations

from typing import Callable

FIXES: dict[str, Callable] = {}


def list_fixes() -> list[str]:
    return list(FIXES)

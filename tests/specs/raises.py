"""Spec that raises on import."""
raise RuntimeError("this spec is broken on purpose")

"""Thin `python -m jobs.<name>` entry points; the logic lives in the forge_* packages."""

"""forge_platform."""

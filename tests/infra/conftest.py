"""Fixtures for the deployment tests: each overlay rendered once per session."""

from __future__ import annotations

import pytest
from infra_layout import CLOUDS, KUBERNETES
from kustomize_lite import Manifest, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Each cloud's two kustomizations rendered once, together: the cluster (`overlays/<cloud>`,
    which includes MLflow) and the campaign RayJob (`overlays/<cloud>/campaign`). Tests that break
    manifests deep-copy them first."""
    return {cloud: render(KUBERNETES / "overlays" / cloud) + render(KUBERNETES / "overlays" / cloud / "campaign")
            for cloud in CLOUDS}

"""Where the deployment files live and what each cloud's overlay must hold (shared by the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "infra" / "kubernetes"
MLFLOW = REPO / "infra" / "mlflow"
IMAGE = REPO / "infra" / "image"


@dataclass(frozen=True)
class Cloud:
    """What an overlay must set for its cloud's H100 pool and identity."""

    node_selector: dict[str, str]
    storage_scheme: str
    identity_annotation: str


CLOUDS = {
    "gke": Cloud({"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, "gs", "iam.gke.io/gcp-service-account"),
    "eks": Cloud({"node.kubernetes.io/instance-type": "p5.48xlarge"}, "s3", "eks.amazonaws.com/role-arn"),
}

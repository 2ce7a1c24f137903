"""Fraisier: a declarative GitOps reconciler for fleets that do not live on Kubernetes."""

__version__ = "0.1.0"
API_VERSION = "fraisier.dev/v1"
KINDS = ("Target", "Service", "Job", "Schedule")

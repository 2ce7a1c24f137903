"""Health checks: single probes (http, tcp, exec) and the threshold-driven wait around them."""

from reconciler.health.probes import ProbeResult, probe
from reconciler.health.wait import (
    HealthPolicy,
    HealthResult,
    has_probes,
    wait_healthy,
    wait_settled,
)

__all__ = ["HealthPolicy", "HealthResult", "ProbeResult", "has_probes", "probe", "wait_healthy",
           "wait_settled"]

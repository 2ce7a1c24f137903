"""Journal invariants after a fault: what "0 records lost" means, checked on the database.

A record is lost when a deployment seen before the fault is gone afterwards, when a deployment is
left open (pending / in_progress) after the fleet converged, when a terminal deployment still has
an open step (status 'started'), or when a deployment's last event disagrees with its status.
"""

from __future__ import annotations

from tests.state.backends import raw_query

OPEN = ("pending", "in_progress")


def deployment_ids(url: str) -> set[str]:
    return {str(r[0]) for r in raw_query(url, "SELECT identifier FROM v_deployment")}


def journal_problems(url: str, seen_before: set[str] | None = None) -> list[str]:
    """Every broken invariant, one line each (empty: nothing lost)."""
    problems: list[str] = []
    deployments = {str(r[0]): str(r[1])
                   for r in raw_query(url, "SELECT identifier, status FROM v_deployment")}
    for identifier in sorted((seen_before or set()) - deployments.keys()):
        problems.append(f"{identifier}: deployment record disappeared")
    for identifier, status in sorted(deployments.items()):
        if status in OPEN:
            problems.append(f"{identifier}: left {status}")
    for deployment, step, status in raw_query(
            url, "SELECT deployment, identifier, status FROM v_deployment_step "
                 "WHERE status = 'started'"):
        if deployments.get(str(deployment)) not in OPEN:
            problems.append(f"{step}: step still {status} on a "
                            f"{deployments.get(str(deployment))} deployment")
    last_events = raw_query(
        url, "SELECT e.deployment, e.status FROM v_deployment_event AS e "
             "WHERE e.seq = (SELECT MAX(e2.seq) FROM v_deployment_event AS e2 "
             "WHERE e2.deployment_id = e.deployment_id)")
    for deployment, status in last_events:
        if deployments.get(str(deployment)) != str(status):
            problems.append(f"{deployment}: last event {status} but status "
                            f"{deployments.get(str(deployment))}")
    return problems


def newest_status(url: str, name: str) -> str | None:
    """Status of the newest deployment of the resource called ``name``."""
    rows = raw_query(url, "SELECT status FROM v_deployment WHERE name = %s "
                          "ORDER BY created_at DESC, seq DESC LIMIT 1", (name,))
    return str(rows[0][0]) if rows else None

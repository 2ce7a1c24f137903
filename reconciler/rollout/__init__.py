"""rollout stage of the reconcile pipeline."""

"""source stage of the reconcile pipeline."""

"""plan stage of the reconcile pipeline."""

"""state stage of the reconcile pipeline."""

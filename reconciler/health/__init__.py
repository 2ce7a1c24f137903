"""health stage of the reconcile pipeline."""

"""spec stage of the reconcile pipeline."""

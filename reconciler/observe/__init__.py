"""observe stage of the reconcile pipeline."""

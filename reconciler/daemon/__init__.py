"""daemon stage of the reconcile pipeline."""

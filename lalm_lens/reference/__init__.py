"""Reference implementations for families that are not in `transformers`, assembled from its parts."""

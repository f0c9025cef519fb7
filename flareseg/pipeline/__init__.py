"""The staged pipeline: stage bookkeeping (manifests, skipping, resume) and one module per stage."""

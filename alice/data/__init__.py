"""Data layer: volumes in world mm, the sample cohort, pseudo-subjects and cohort manifests."""

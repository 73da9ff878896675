"""Anatomy embedding (SAM, Yan et al., IEEE TMI 2022): the network, its training, cached whole-case embeddings and
point matching in world mm (``model``, ``loss``, ``train``, ``cache``, ``match``; ``grid`` holds the geometry)."""

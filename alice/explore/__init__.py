"""Exploring learned representations: the FAISS index of dense embeddings, retrieval across a cohort."""

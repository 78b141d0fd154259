"""Curation: quality scores, embeddings, duplicates and a balanced subset. It flags samples and adds views;
it never deletes a sample. Quality and embeddings are stages (one row per sample); duplicates and the balanced
subset look at the whole dataset at once and are written from those tables (``dedup``, ``sample``)."""

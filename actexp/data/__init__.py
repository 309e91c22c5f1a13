"""Texts in: corpora, labelled texts, STS pairs and text inputs; imports models, store and below."""

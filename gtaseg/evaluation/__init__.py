"""Evaluation: attention masks, Jaccard, accuracy, figures."""

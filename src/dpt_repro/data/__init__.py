"""Datasets: raw sources, canonical `.npz` shards, labelled/validation splits and augmentations."""

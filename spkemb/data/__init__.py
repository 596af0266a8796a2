"""Manifests, trial lists, folder layouts, Kaldi import/export, torch datasets."""

"""The HDF5 embedding store, batched extraction, and export to .npy / Kaldi text."""

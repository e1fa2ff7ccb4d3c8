"""Data: the Cityscapes layout, stand-in data, reading the raw download, preparing it, loading prepared data."""

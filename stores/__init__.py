"""The logit store (zarr v3): the contract between stage one and stage two. Knows no models."""

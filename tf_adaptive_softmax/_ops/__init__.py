"""Private low-level kernels (the ground floor): stateless seeds and exact integer draws
(`random`), inverse-CDF draws, bucket search, segmented scans and alias tables (`discrete`).
Everything here is XLA-safe: static shapes, no categorical over the catalogue, int32 seeds."""

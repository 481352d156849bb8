"""Private low-level kernels (the ground floor): stateless seeds and exact integer draws
(`random`), inverse-CDF draws, bucket search, segmented scans and alias tables (`discrete`), row
lookups in sharded tables (`tables`), and kernels run as one XLA computation in every mode (`xla`).
Everything here is XLA-safe: static shapes, no categorical over the catalogue, int32 seeds."""

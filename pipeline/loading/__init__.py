"""A shard set or feature cache -> batches: DataSource, the CPU loaders, DALI, the HDF5 feature store."""

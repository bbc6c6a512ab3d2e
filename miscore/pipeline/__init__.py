"""The stages after the cache: patches, augmentation, loading, training, inference, evaluation."""

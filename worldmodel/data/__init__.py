"""Video decoding, clip sampling, datasets, transforms and the built-in corpus."""

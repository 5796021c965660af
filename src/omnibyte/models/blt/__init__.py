"""The Byte Latent Transformer family: patchers, the entropy model and the model."""

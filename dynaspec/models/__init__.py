"""Model code: paged attention, decoder architectures, and the HF-architecture registry."""

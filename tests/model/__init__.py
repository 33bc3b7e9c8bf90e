"""Model tier: hypothesis state machines against a model of the store, and concurrency stress."""

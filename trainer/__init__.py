"""The trainer: composes models, data and optim into a run."""

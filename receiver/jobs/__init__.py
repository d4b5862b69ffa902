"""What the workers do for each provider's jobs."""

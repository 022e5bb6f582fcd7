"""citywatch."""

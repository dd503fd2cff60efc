"""Sessions: state that lives across calls, and the worker that holds it."""

"""Settings, run context, models (including the offline rules model), prompts and the CLI."""

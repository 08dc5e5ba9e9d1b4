"""The safety plane: checks on what comes in (requests, third-party text) and goes out."""

"""The scheduler's data plane: job state files, input listing, output writing and shuffles."""

"""The scheduler's pure core: specs, plans, job and service state machines, slots and speculation."""

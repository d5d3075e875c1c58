"""The scheduler's Ray actors: FuxiMaster, JobMaster, workers, service replicas and their manager."""

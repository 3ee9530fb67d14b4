"""Plexus learner agent: subset benchmarking, DAB bound, trainer, SPIN client, stressors."""

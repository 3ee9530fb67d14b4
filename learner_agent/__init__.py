"""Plexus learner agent: subset benchmarking, DAB bound, deadline trainer, stressors, SPIN client, daemon."""

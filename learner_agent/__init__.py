"""Plexus learner agent: SB, DAB bound, deadline trainer, stressors, SPIN client, daemon."""

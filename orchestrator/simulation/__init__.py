"""Virtual-clock simulator that drives the same aggregator cores as the live service."""

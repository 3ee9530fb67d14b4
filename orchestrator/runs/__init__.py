"""Running training: the learner gateway, closing a round, and one driver per mode.

- `gateway`: `LearnerGateway`, the one way to reach learner agents (one duplex stub per
  learner, `gather` under a time limit, one typed method per agent procedure) and which
  learners are alive;
- `rounds`: `close_round` (check answers, FedAvg, evaluate, write the model version), used by
  the sync and job drivers; `write_model`, writing a model version;
- `sync`: `SyncDriver`, global update cycles of one task (thesis ch. 3);
- `jobs`: `JobDriver`, several sync tasks allocated together by MED / MMTT (thesis ch. 4);
- `asynchronous` and `async_runner`: `AsyncDriver` connects SPIN / FedBuff / PORT tasks to the
  learners and the store (`StoreJournal` makes every accepted update and aggregation durable,
  `restore_runner` resumes a task after a restart); `AsyncTaskRunner` drives one aggregator
  core on a real clock;
- `taskdata`: a task's data files (shards, test split, model v0) and reading them back.

Drivers receive the store, the gateway and the metrics; none imports `orchestrator.service`.
"""

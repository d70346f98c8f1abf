"""Scale-out engines: run routing, drift and report statistics on a Ray cluster.

``engine`` holds the ``--engine ray --address ADDR`` options every large-log command shares and
the Ray session; ``io`` reads JSONL/Parquet files or directories as numbered records and writes
decisions; ``route`` routes a dataset with one verified ``Router`` per actor; ``stats`` computes
drift and report statistics as mergeable partial aggregates; ``feedback`` joins outcomes,
decisions and prompts in hash partitions; ``adapt`` runs ``adapt``'s feature extraction on actors.

Nothing in this package imports Ray at import time: ``ray`` is imported inside the functions that
need it, so a command run without ``--engine ray`` never loads it. What it leaves out: the decision
logic itself (``classifier.serving``) and the statistics' meaning (``classifier.evaluation``).
"""

"""The benchmark runner's parts (run.py is the command line): one module per job.

scenarios  the scenario table and each scenario's targets
builds     the exporter builds under test (--exporter NAME=PATH) and what code each one runs
brokers    a private redis-server, a fresh RabbitMQ vhost, beam.smp pinning
monitors   the broker's view of the consumer during the load (subscription, backlog, RSS series)
consumers  starting the exporter or the reference, readiness, counting, their final figures
load       the generator processes and what they published
measure    CPU, RSS, core noise, scrape timing, the /metrics text
checks     the consumers' counters against the generator's ground truth
pyspy      the optional profile of the exporter
trial      one run: one consumer, one broker, one load, every figure
figures    the figures a run yields, by key
report     summaries over repeats, targets, the text table, Markdown
machine    what machine and versions a run was on
procs      paths, ports, processes
"""

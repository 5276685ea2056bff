"""The load generator's parts (generate.py is its command line).

publish    the connection, Celery's dispatchers counting what they hand to the broker, publish batches
workers    the simulated workers: one buffering dispatcher each, heartbeats on a schedule
tasks      the task stream: names, queues, outcomes, and the pipeline that interleaves tasks
pacing     how fast: steps per loop iteration, when to stop creating tasks, when to wake
generator  the loop that ties them together and the JSON it prints
"""

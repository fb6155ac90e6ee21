"""The daemon as a process: its lifetime (start what it needs, stop in reverse), the scheduler that
starts and stops the scheduling parts as one, leader election, the embedded servers, the NATS
connection, owned tasks and the local agents of ``sluice up``."""

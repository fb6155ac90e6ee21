"""The decisions Sluice makes, as pure functions that return a value with its reason: whether a run
is made and how (admission), its parameters, the run and step state machine, where a step runs, its
fingerprint and reuse, and what its assignment says. No database, bus or filesystem here: callers
gather the facts and do the I/O."""

"""The pipelines and triggers the browser tests publish; each test uses its own."""

DOCUMENTS = """
kind: Pipeline
name: web-train
description: Fetch, train, then evaluate and report; train takes a while, so a watcher sees it running.
steps:
  - name: fetch
    command: [mkdir, -p, "${outputs.rows}"]
    outputs: [rows]
  - name: train
    command:
      - sh
      - -c
      - 'echo "epoch 1 loss 0.50"; sleep 2.5; echo "epoch 2 loss 0.25"; mkdir -p "$1"'
      - train
      - ${outputs.model}
    inputs:
      rows: ${steps.fetch.outputs.rows}
    outputs: [model]
  - name: evaluate
    command: [echo, "accuracy 0.93", "${inputs.model}"]
    inputs:
      model: ${steps.train.outputs.model}
  - name: report
    command: [echo, "report written"]
    after: [train]
---
kind: Pipeline
name: web-typed
params:
  epochs: {type: integer, description: How many passes over the data}
  label: {type: string, default: nightly}
steps:
  - name: show
    command: [echo, "epochs=${params.epochs} label=${params.label}"]
---
kind: Pipeline
name: web-sleeper
steps:
  - name: sleep
    command: [sleep, "600"]
---
kind: Pipeline
name: web-tick
steps:
  - name: tick
    command: [echo, tick]
---
kind: Trigger
name: web-nightly
pipeline: web-train
on:
  cron: "0 0 2 * * *"
  timezone: Europe/Madrid
"""

EVERY_THREE_SECONDS = """
kind: Trigger
name: web-every-3s
pipeline: web-tick
on:
  cron: "*/3 * * * * *"
  catchup: none
"""
"""Applied by the test that watches it fire (and pauses it at its end), so it does not fill the
other tests' lists."""

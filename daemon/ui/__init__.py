"""The web UI served at /: server-rendered pages of pipelines and their runs."""

"""The web UI served at ``/`` on the API's port: server-rendered pages (Jinja2), a little plain
JavaScript for the live parts, and the run's DAG laid out on the server (:mod:`daemon.ui.dag`)."""

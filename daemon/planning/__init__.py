"""Turning a request for a run into a run: the one way runs are made (``creation``), with the facts it
gathers (reuse look-ups and data fingerprints) and the caches it reads (versions' specs, runs'
rendering contexts)."""

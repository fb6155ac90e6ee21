"""Sluice's YAML documents (contract §3): parsing, validation, canonical form and version digests.

``parse_documents`` validates each document alone; ``check_references`` then checks what documents
refer to (datastores, pipelines and their params), which needs what is already stored.
"""

from daemon.documents.canonical import spec_from_json, spec_to_json, version_digest
from daemon.documents.parse import API_VERSION, SourceText, parse_documents
from daemon.documents.problems import DocumentErrors, Problem
from daemon.documents.references import DEFAULT_DATASTORE, check_references
from daemon.documents.specs import (
    DatastoreSpec,
    Document,
    Foreach,
    Kind,
    ParamSpec,
    PipelineSpec,
    Resources,
    RunSource,
    Spec,
    StepSpec,
    TriggerSpec,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_DATASTORE",
    "DatastoreSpec",
    "Document",
    "DocumentErrors",
    "Foreach",
    "Kind",
    "ParamSpec",
    "PipelineSpec",
    "Problem",
    "Resources",
    "RunSource",
    "SourceText",
    "Spec",
    "StepSpec",
    "TriggerSpec",
    "check_references",
    "parse_documents",
    "spec_from_json",
    "spec_to_json",
    "version_digest",
]

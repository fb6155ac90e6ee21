"""The ${…} substitution grammar: finding references and rendering them."""

from __future__ import annotations

import pytest

from daemon.documents.template import TemplateError, references, render


def test_references_in_order() -> None:
    text = "--date=${params.date} ${steps.prep.outputs.features} ${event.headers.Nats-Msg-Id}"

    assert references(text) == ["params.date", "steps.prep.outputs.features", "event.headers.Nats-Msg-Id"]


def test_escaped_and_plain_dollars_are_not_references() -> None:
    assert references("echo $${HOME} costs $5 and $HOME") == []


@pytest.mark.parametrize(
    "text", ["${", "${params.date", "${}", "${ params.date }", "${a..b}", "${a.}", "x ${a b}"]
)
def test_malformed_substitution_is_an_error(text: str) -> None:
    with pytest.raises(TemplateError, match=r"^malformed substitution at "):
        references(text)


def test_malformed_substitution_message_shows_where() -> None:
    with pytest.raises(TemplateError) as caught:
        references("ok ${a} then ${oops and more")

    assert caught.value.message == "malformed substitution at '${oops and more'"


def test_render_substitutes_every_reference() -> None:
    values = {"params.date": "2024-01-01", "run.id": "r-1"}

    assert (
        render("--date=${params.date}/${run.id}/${params.date}", values) == "--date=2024-01-01/r-1/2024-01-01"
    )


def test_render_unescapes_and_keeps_plain_dollars() -> None:
    assert render("echo $${HOME} $HOME $$ costs $5", {}) == "echo ${HOME} $HOME $$ costs $5"


def test_render_does_not_scan_substituted_values_again() -> None:
    assert render("${a}", {"a": "${b}", "b": "no"}) == "${b}"


def test_render_without_references_returns_the_text() -> None:
    assert render("plain text", {}) == "plain text"
    assert render("", {}) == ""


def test_render_missing_value_is_an_error() -> None:
    with pytest.raises(TemplateError) as caught:
        render("${params.date} ${params.model}", {"params.date": "x"})

    assert caught.value.message == "no value for ${params.model}"


def test_render_malformed_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"^malformed substitution"):
        render("${params.date", {"params.date": "x"})

"""R18: no password, and no DSN carrying one, anywhere in the synthesized app."""

from __future__ import annotations

import json
import re

from tests.statemachine.harness import state_machine_definition

DSN_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^\s/\"'@]*:[^\s\"'@]+@", re.IGNORECASE)
PASSWORD_WORD = re.compile(r"passw(?:or)?d|pwd\b|secretstring", re.IGNORECASE)


def assembly_texts(assembly) -> dict[str, str]:
    """Every file CDK writes for deployment (templates, manifests, tree), not the staged code."""
    return {p.name: p.read_text() for p in assembly.outdir.glob("*.json")}


def test_no_password_or_dsn_in_templates_manifests_or_the_definition(assembly):
    texts = assembly_texts(assembly)
    texts["definition.asl.json"] = json.dumps(state_machine_definition(assembly))
    assert "TotesysEtl.template.json" in texts and "manifest.json" in texts
    for name, text in texts.items():
        assert not DSN_WITH_PASSWORD.search(text), name
        assert not PASSWORD_WORD.search(text), (name, PASSWORD_WORD.search(text))


def test_functions_receive_secret_references_never_secret_values(assembly):
    for fn in assembly.resources("AWS::Lambda::Function").values():
        env = fn["Properties"]["Environment"]["Variables"]
        for key, value in env.items():
            assert not key.endswith("_DSN"), key
            if key.endswith("_SECRET_ARN"):
                assert value.startswith(("arn:", "totesys-etl/")) and "://" not in value


def test_the_scanner_catches_what_it_is_meant_to_catch():
    assert DSN_WITH_PASSWORD.search("postgresql://etl:s3cret@db.internal:5432/totesys")
    assert not DSN_WITH_PASSWORD.search("postgresql://etl@db.internal:5432/totesys")
    assert PASSWORD_WORD.search('{"Password": "x"}')

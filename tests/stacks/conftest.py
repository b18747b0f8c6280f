from __future__ import annotations

import pytest

from tests.stacks.synth import Assembly, default_assembly


@pytest.fixture(scope="session")
def assembly() -> Assembly:
    return default_assembly()


@pytest.fixture(scope="session")
def template(assembly: Assembly):
    from aws_cdk.assertions import Template

    return Template.from_json(assembly.template)

"""Admin-provided templates cannot reach Python internals: boot templates render in Jinja2's
immutable sandbox (refused at catalogue apply and at launch), placeholder patterns accept
``{name}`` only."""

from __future__ import annotations

import re

import pytest

from orchestrator.catalog_spec import CatalogError, parse_text
from spawners.base import DataMount, InstanceSpec, Owner
from spawners.cloudinit import (
    BootSettings,
    BootTemplateError,
    MountTemplate,
    check_boot_template,
    render_user_data,
)
from spawners.k8s_config import pod_options_from_mapping
from spawners.templating import format_placeholders

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ owner.__class__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ protocols.append('x') }}",  # immutable sandbox: no mutating methods
    "{{ owner.update({'username': 'root'}) }}",
    "{% set x = mounts.pop() %}{{ x }}",
]


def spec(template: str) -> InstanceSpec:
    return InstanceSpec(uid="i-1", name="n", image_ref="img", flavour_ref="f",
                        protocols=("jupyter",), owner=Owner("alice"),
                        secrets={"jupyter_token": "tok"}, boot_template=template)


@pytest.mark.parametrize("escape", ESCAPES)
def test_escape_attempts_fail_at_launch_with_a_clear_error(escape: str) -> None:
    template = f"#cloud-config\nruncmd:\n  - [echo, \"{escape}\"]\n"
    with pytest.raises(BootTemplateError) as err:
        render_user_data(spec(template))
    assert str(err.value).startswith("boot template refused by the sandbox: ")
    assert "unsafe" in str(err.value) or "not safely callable" in str(err.value)


@pytest.mark.parametrize("escape", ESCAPES)
def test_escape_attempts_are_refused_by_the_catalogue(escape: str) -> None:
    catalogue = ("images:\n  - name: Evil\n    protocols: [jupyter]\n    boot_template: |\n"
                 "      #cloud-config\n      runcmd:\n"
                 f"        - [echo, \"{escape}\"]\n")
    with pytest.raises(CatalogError) as err:
        parse_text(catalogue, "c.yaml")
    [problem] = err.value.problems
    assert problem.startswith("line 4: images[1] (Evil): boot_template: boot template "
                              "refused by the sandbox: "), problem
    assert check_boot_template(f"#cloud-config\n{{# #}}\nx: \"{escape}\"\n")


def test_ordinary_templates_still_work_and_syntax_errors_are_caught() -> None:
    good = "#cloud-config\nruncmd:\n  - [echo, {{ owner.username | tojson }}, " \
           "{{ protocols | join(',') | shquote | tojson }}]\n"
    assert "alice" in render_user_data(spec(good))
    assert check_boot_template(good) == ""
    assert check_boot_template("cloud-init.yaml.j2") == ""  # a file name: not rendered here
    assert "boot template" in check_boot_template("#cloud-config\n{% if %}\n")
    # Instance-dependent failures are left to launch time, not refused up front.
    assert check_boot_template("#cloud-config\nx: {{ no_such_name }}\n") == ""


@pytest.mark.parametrize("pattern", [
    "{path.__class__}", "{source.__class__.__mro__}", "{name[0]}", "{path!r}", "{0}",
    "{path:>300}", "{secret}", "{",
])
def test_mount_device_patterns_accept_plain_placeholders_only(pattern: str) -> None:
    settings = BootSettings(mount_templates={"default": MountTemplate(device=pattern)})
    bad = InstanceSpec(uid="i-1", name="n", image_ref="i", flavour_ref="f",
                       protocols=("jupyter",), owner=Owner("alice"),
                       secrets={"jupyter_token": "t"},
                       mounts=(DataMount("p1", "/data/p1", "data/p1"),))
    with pytest.raises(BootTemplateError, match="mount device pattern"):
        render_user_data(bad, settings)


def test_placeholders() -> None:
    assert format_placeholders("/home/{username}/{{x}}", {"username": "al"}, "p") \
        == "/home/al/{x}"
    with pytest.raises(ValueError, match=re.escape("home_path '/home/{username.__class__}'")):
        pod_options_from_mapping({"home_path": "/home/{username.__class__}"})

"""The strategy plugin's cache of compiled templates (plugins/strategy/mitogen_linear.py): each worker of a
run reads the code a worker before it compiled; what it renders must be what Ansible renders without it."""

from __future__ import annotations

import marshal
import os
import stat

import pytest
from ansible._internal._templating._jinja_bits import AnsibleEnvironment
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template


@pytest.fixture
def install(strategy, monkeypatch):
    """Install a cache in a folder; Ansible's own compile comes back after the test."""
    monkeypatch.setattr(AnsibleEnvironment, "compile", AnsibleEnvironment.compile)
    return strategy.install_template_cache


def render(template: str, **variables):
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(template))


TEMPLATES = [
    ("{{ name | upper }} has {{ items | length }} items", {"name": "edge", "items": [1, 2, 3]}),
    ("{% for key in keys | sort %}{{ key }},{% endfor %}", {"keys": ["b", "a"]}),
    ("{{ 'yes' if port is number and port > 1024 else 'no' }}", {"port": 8443}),
    ("{{ hosts | map(attribute='name') | join(' ') }}", {"hosts": [{"name": "llm1"}, {"name": "llm2"}]}),
    ("{{ missing | default('a \\\\ b') }}", {}),
    ("{{ {'a': 1} | to_json }}", {}),
]


@pytest.mark.parametrize(("template", "variables"), TEMPLATES)
def test_a_later_worker_reads_the_code_and_renders_the_same(install, tmp_path, template, variables):
    expected = render(template, **variables)
    first = install(tmp_path / "cache")
    assert render(template, **variables) == expected
    assert first.compiles == 1 and first.loads == 0
    # Another worker: a new process with an empty memory, the same folder.
    later = install(tmp_path / "cache")
    assert render(template, **variables) == expected
    assert later.compiles == 0 and later.loads == 1


def test_the_code_follows_the_compile_options(install, tmp_path):
    """Backslash escaping and whitespace control shape the code: each combination has its own entry."""
    cache = install(tmp_path / "cache")
    source = "{{ '\\n' | length }}"
    environment = AnsibleEnvironment()
    trimmed = environment.overlay(trim_blocks=not environment.trim_blocks)
    keys = {cache.key(environment, source), cache.key(trimmed, source)}
    from ansible._internal._templating._jinja_bits import _TemplateCompileContext

    for escape in (True, False):
        with _TemplateCompileContext(escape_backslashes=escape):
            keys.add(cache.key(environment, source))
    assert len(keys) == 4
    assert cache.key(environment, source) != cache.key(environment, source + " ")


def test_a_filter_now_called_differently_means_a_new_compile(install, tmp_path):
    """The code passes a filter the context when the filter asked for it when compiled: a changed plugin must
    not run with code made for the old one."""
    first = install(tmp_path / "cache")
    assert render("{{ 'x' | upper }}") == "X"
    [entry] = [path for path in (tmp_path / "cache").iterdir()]
    conventions, code = marshal.loads(entry.read_bytes())
    assert conventions == [["filter", "upper", None]]
    entry.write_bytes(marshal.dumps([[["filter", "upper", "context"]], code]))

    later = install(tmp_path / "cache")
    assert render("{{ 'x' | upper }}") == "X"
    assert later.compiles == 1 and later.loads == 0
    assert first.compiles == 1


def test_the_folder_is_private_even_under_a_loose_umask(install, tmp_path):
    """Its entries are code this process runs: nobody else may write there. A umask of 002 (Debian's for
    users with a group of their own) would have made the folders group-writable."""
    previous = os.umask(0o002)
    try:
        cache = install(tmp_path / "llmcloud" / "ansible-templates" / "versions")
    finally:
        os.umask(previous)
    assert cache is not None
    assert stat.S_IMODE((tmp_path / "llmcloud" / "ansible-templates" / "versions").stat().st_mode) == 0o700
    for above in (tmp_path / "llmcloud", tmp_path / "llmcloud" / "ansible-templates"):
        assert not above.stat().st_mode & 0o022
    assert render("{{ 1 + 1 }}") == 2


def test_a_folder_of_another_user_is_not_used(install, tmp_path, monkeypatch):
    folder = tmp_path / "llmcloud" / "ansible-templates" / "versions"
    folder.mkdir(parents=True)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)  # as if another user owned the folders
    assert install(folder) is None
    assert render("{{ 1 + 1 }}") == 2  # Ansible's own compile, untouched


def test_a_broken_entry_is_compiled_again(install, tmp_path):
    install(tmp_path / "cache")
    assert render("{{ 2 * 3 }}") == 6
    [entry] = list((tmp_path / "cache").iterdir())
    entry.write_bytes(b"not marshal data")
    later = install(tmp_path / "cache")
    assert render("{{ 2 * 3 }}") == 6
    assert later.compiles == 1


@pytest.mark.parametrize("broken", ["{{ name | }}", "{{ name | no_such_filter }}", "{% if %}"])
def test_an_error_reads_as_without_the_cache(install, tmp_path, broken):
    from ansible.errors import AnsibleError

    with pytest.raises(AnsibleError) as plain:
        render(broken, name="x")
    install(tmp_path / "cache")
    with pytest.raises(AnsibleError) as cached:
        render(broken, name="x")
    assert type(cached.value) is type(plain.value)
    assert str(cached.value) == str(plain.value)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture
def vars_files(strategy, monkeypatch):
    """The parse-once vars_files loader installed; Ansible's own comes back after the test. Returns a list
    that records each parse Ansible's loader did."""
    parses = []
    original = DataLoader.load_from_file

    def counting(self, file_name, *args, **kwargs):
        parses.append(file_name)
        return original(self, file_name, *args, **kwargs)

    monkeypatch.setattr(DataLoader, "load_from_file", counting)
    strategy.cache_vars_files()
    return parses


def load_as_vars_files(path):
    """What ansible-core's VariableManager asks for a play's vars_files."""
    return DataLoader().load_from_file(str(path), unsafe=True, cache="vaulted", trusted_as_template=True)


def test_a_vars_file_is_parsed_once_while_it_is_unchanged(vars_files, tmp_path):
    site = tmp_path / "site.yml"
    site.write_text('__site_a: 1\n__site_b: "{{ __site_a + 1 }}"\n')
    first = load_as_vars_files(site)
    assert first == {"__site_a": 1, "__site_b": "{{ __site_a + 1 }}"}
    assert load_as_vars_files(site) is first
    assert len(vars_files) == 1
    # The template in it stays a template Ansible trusts (vars_files are the playbook's own).
    assert render_with(first, "{{ __site_b }}") == 2


def test_a_vars_file_changed_during_the_run_is_read_again(vars_files, tmp_path):
    site = tmp_path / "site.yml"
    site.write_text("__site_a: 1\n")
    assert load_as_vars_files(site) == {"__site_a": 1}
    site.write_text("__site_a: 22\n")
    os.utime(site, ns=(site.stat().st_atime_ns, site.stat().st_mtime_ns + 1_000_000))
    assert load_as_vars_files(site) == {"__site_a": 22}
    assert len(vars_files) == 2


def test_other_loads_are_ansibles_own(vars_files, tmp_path):
    """Role files, include_vars and inventories (other cache modes, copies) are read as before."""
    other = tmp_path / "defaults.yml"
    other.write_text("x: [1]\n")
    first = DataLoader().load_from_file(str(other))
    first["x"].append(2)  # a caller may change its copy: the next caller gets the file's content
    assert DataLoader().load_from_file(str(other)) == {"x": [1]}
    assert DataLoader().load_from_file(str(other), cache="none") == {"x": [1]}
    assert len(vars_files) == 3


def test_a_missing_vars_file_fails_as_without_the_cache(vars_files, tmp_path):
    from ansible.errors import AnsibleError

    with pytest.raises(AnsibleError, match="Unable to retrieve file contents"):
        load_as_vars_files(tmp_path / "missing.yml")


def render_with(variables: dict, template: str):
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(template))


def test_plugins_are_loaded_again_only_after_their_cache_was_emptied(strategy, monkeypatch):
    from ansible.plugins.loader import filter_loader

    strategy._warm_plugins()
    listed = []
    original = filter_loader.all

    def counting(*args, **kwargs):
        listed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(filter_loader, "all", counting)
    strategy._warm_plugins()
    assert listed == []  # nothing emptied: nothing to do before this task
    # include_role of a role with filter_plugins empties the cache (a new, empty one)
    monkeypatch.setattr(filter_loader, "_cached_non_collection_wrappers", {})
    strategy._warm_plugins()
    assert listed == [1]
    assert "to_nice_json" in filter_loader._cached_non_collection_wrappers  # loaded again, before the forks
    strategy._warm_plugins()
    assert listed == [1]

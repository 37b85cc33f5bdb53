"""llmcloud: OpenStack → inventory → Ansible → testinfra, for private LLM inference.

What users run, by concern:

- ``config/``: the stack config's schema (``stacks/Pulumi.<stack>.yaml``) and its checks;
- ``contract.py``: the topology plan (hosts, names, groups), the shared ports, and the mapping from a stack
  config to the roles' variables: where a stack setting becomes a role variable;
- ``provision/``: the Pulumi program on OpenStack (``__main__.py`` calls it);
- ``local/``: the same stack on Debian 12 containers here (``make local``), through the same mapping;
- ``inventory.py``: writing and reading ``inventory/<stack>/``; ``converge.py``, ``verify.py``, ``status.py``:
  site.yml, the testinfra checks, the deployment on one screen; ``cli.py``: the ``llmcloud`` command.

The test bed (a local OpenStack cloud, the Pulumi engine built from Go) is the ``testbed`` package.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: roles, templates and site.yml are found relative to it.
REPO_ROOT = Path(__file__).resolve().parent.parent

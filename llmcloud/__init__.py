"""llmcloud: OpenStack → inventory → Ansible → testinfra, for private LLM inference.

Code shared by the Pulumi program (``__main__.py``) and the ``llmcloud`` CLI lives here.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: roles, templates and site.yml are found relative to it.
REPO_ROOT = Path(__file__).resolve().parent.parent

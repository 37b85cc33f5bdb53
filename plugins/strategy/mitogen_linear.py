"""The linear strategy run over Mitogen: one Python interpreter per host, kept for the whole run.

ansible.cfg selects it (``strategy = mitogen_linear``). Plain SSH runs every task as a new SSH exec with a new
Python and the module's zip: about 0.45 s per task here, so a converge of ~170 mostly unchanged tasks spent
two minutes saying "ok". Over Mitogen a task takes about 0.1 s. Semantics are those of ``linear``.

The `mitogen` package is pinned in requirements.txt. To go back to plain SSH for a run:
``ANSIBLE_STRATEGY=linear ansible-playbook ...``.
"""

from __future__ import annotations

import ansible.plugins.strategy.linear
import ansible_mitogen.strategy


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, ansible.plugins.strategy.linear.StrategyModule):
    pass

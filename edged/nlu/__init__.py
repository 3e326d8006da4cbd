"""Understanding a question (pure: no MQTT, no I/O): time windows, metrics, intent, route.

``understand(question, metrics, now) -> Plan`` is the entry point (:mod:`.router`);
:mod:`edged.answers` turns a local Plan into a template answer built only from facts.
"""

from .router import CLOUD, LOCAL, Plan, understand

__all__ = ["understand", "Plan", "LOCAL", "CLOUD"]

"""``manage.py benchmark``: our figures beside a baseline measured in the same run,
alternating, medians of several rounds (docs/benchmarks.md).

Tooling, not the domain: a small Django app (for the command and the baseline view) that
uses ``delivery`` and ``brokers`` from outside. One module per scenario (``broker``,
``persist``, ``ingress``, ``e2e``, ``takeover``); what they share: ``report`` (figures and
errors), ``fixtures`` (users, conversations, messages), ``processes`` (the API server and
the workers as subprocesses, CPU and memory), ``wrk`` (the HTTP load).

Every scenario works in its own Redis namespace and on its own users and conversations,
and removes them afterwards, so it can run beside a live service.
"""

"""The daemon's optional local web UI (docs/ui.md), off unless the device config has a ``ui:`` section.

Imported only when it is on: the idle daemon without a UI never loads this package
(tests/daemon/test_footprint.py). :mod:`.tokens` is also used by ``kestrel ui token``.
"""

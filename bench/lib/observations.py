"""The hand-written "Observations" of a benchmark report.

A benchmark's report.py renders its markdown with a "{notes}" placeholder; notes.md beside that
report.py (what the committed run showed, written by hand) goes there under "## Observations",
and when there is none the placeholder goes away. One place for it, so every report treats its
notes the same way.
"""

import os


def with_observations(doc, report_py):
    """DOC with its "{notes}" placeholder filled from notes.md next to REPORT_PY (its __file__)."""
    notes = os.path.join(os.path.dirname(os.path.abspath(report_py)), "notes.md")
    if not os.path.exists(notes):
        return doc.replace("{notes}", "", 1)
    with open(notes) as f:
        return doc.replace("{notes}", "## Observations\n\n" + f.read().strip() + "\n\n", 1)

"""Prepares Herald's alert rules for promtool, for scripts/k8s-check.

Usage: k8s-rules.py PROMETHEUS_RULE.yaml RUNBOOK.md OUT_RULES.yaml

Writes the PrometheusRule's spec (its groups) as a plain Prometheus rule file, which is what
promtool reads, and checks that every alert's runbook_url (docs/runbook.md#<anchor>) names a
section of the runbook, by the anchor GitHub gives its heading. Prints every problem and exits 1
if there is any.
"""

import re
import sys

import yaml


def anchors(runbook: str) -> set:
    """The anchors of the Markdown headings: lower case, punctuation dropped, spaces to '-'."""
    found = set()
    with open(runbook) as file:
        for line in file:
            match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
            if match:
                text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
                found.add(text.replace(" ", "-"))
    return found


def main() -> int:
    source, runbook, out = sys.argv[1:4]
    with open(source) as file:
        rule = yaml.safe_load(file)
    groups = rule["spec"]["groups"]
    known = anchors(runbook)
    problems = []
    for group in groups:
        for entry in group["rules"]:
            if "alert" not in entry:
                continue
            url = entry.get("annotations", {}).get("runbook_url", "")
            path, _, anchor = url.partition("#")
            if path != "docs/runbook.md" or anchor not in known:
                problems.append(f"{entry['alert']}: runbook_url {url!r} names no section of {runbook}")
    with open(out, "w") as file:
        yaml.safe_dump({"groups": groups}, file, sort_keys=False, width=1000)
    for problem in problems:
        print(f"k8s-check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

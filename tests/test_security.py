"""No sheet or config value reaches a shell: every rule runs a Python script, and no script starts
a process through a shell."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

#: Snakemake directives that hand a rule's command to a shell (or run arbitrary code in the DAG).
SHELL_DIRECTIVES = re.compile(r"^\s+(shell|run|cwl|wrapper|notebook)\s*:", re.M)
#: Calls that start a process (through a shell or not): none belongs in the analysis code.
PROCESS_CALLS = {"system", "popen", "Popen", "run", "call", "check_call", "check_output", "getoutput"}
PROCESS_MODULES = {"os", "subprocess", "commands", "pty"}


def shell_directives(text: str) -> list[str]:
    return SHELL_DIRECTIVES.findall(text)


def process_calls(source: str) -> list[str]:
    """``module.function`` calls that start a process, and imports of process modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"import {n}" for n in names if n in PROCESS_MODULES - {"os"}]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in PROCESS_MODULES and node.func.attr in PROCESS_CALLS:
                found.append(f"{owner.id}.{node.func.attr}")
    return found


def test_checks_find_a_planted_shell_rule_and_process_call():
    assert shell_directives('rule bad:\n    input: "a"\n    shell:\n        "cat {input}"\n') == ["shell"]
    assert process_calls("import os\nos.system('rm ' + sample)\n") == ["os.system"]
    assert process_calls("import subprocess\n") == ["import subprocess"]


def test_no_rule_hands_its_command_to_a_shell():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    found = {f.name: shell_directives(f.read_text()) for f in files}
    assert not any(found.values()), found
    # ... and every rule runs a script (the adapters in workflow/scripts/), except the target rule.
    text = "\n".join(f.read_text() for f in files)
    blocks = re.split(r"^(?=rule \w+:)", text, flags=re.M)[1:]
    without = [b.split(":")[0] for b in blocks if not re.search(r"^\s+script:", b, re.M)]
    assert len(blocks) > 15 and without == ["rule all"], without


def test_no_workflow_script_starts_a_process():
    scripts = sorted(Path(ROOT / "workflow" / "scripts").rglob("*.py"))
    found = {str(p.relative_to(ROOT)): process_calls(p.read_text()) for p in scripts}
    assert len(scripts) > 30 and not any(found.values()), {k: v for k, v in found.items() if v}

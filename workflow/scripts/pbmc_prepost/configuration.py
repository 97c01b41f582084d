"""Validate the workflow configuration against its JSON schema and fill in defaults.

Snakemake's own ``validate`` reports the first schema error in jsonschema's words; users get every
problem at once here, each naming the config file, the key, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pbmc_prepost import InputError


def _fill_defaults(schema: dict, config: dict) -> None:
    """Recursively add schema defaults for missing keys (objects are filled inside, too)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and isinstance(config.get(key), dict):
            _fill_defaults(sub, config[key])


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        where = f"'{key}'" if error.absolute_path else "the top level"
        guesses = {e: difflib.get_close_matches(str(e), allowed, n=1, cutoff=0.6) for e in extra}
        meant = "; ".join(f"did you mean '{g[0]}' for '{e}'?" for e, g in guesses.items() if g)
        return (
            f"unknown key(s) {', '.join(repr(e) for e in extra)} in {where}. "
            + (f"Fix: {meant} " if meant else "")
            + f"Allowed: {', '.join(allowed)}"
        )
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bounds = {
            k: error.schema[k]
            for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
            if k in error.schema
        }
        text = ", ".join(f"{k} {v}" for k, v in bounds.items())
        return f"{key} = {error.instance!r} is out of range ({text}). Fix: set a value within that range"
    if error.validator == "enum":
        return f"{key} = {error.instance!r} is not allowed. Fix: use one of {error.validator_value}"
    if error.validator == "type":
        return f"{key} = {error.instance!r} should be of type {error.validator_value}. Fix: correct the value's type"
    description = error.schema.get("description", "")
    return f"{key}: {error.message}. Fix: see the schema{': ' + description if description else ''}"


def validate_config(
    config: dict[str, Any], schema_path: str | Path, source: str = "config/config.yaml"
) -> dict[str, Any]:
    """Check ``config`` and return a copy with every default filled in.

    Parameters
    ----------
    config
        The configuration as loaded by Snakemake (config file plus ``--config`` overrides).
    schema_path
        ``workflow/schemas/config.schema.yaml``.
    source
        Name of the config file for messages.

    Raises
    ------
    InputError
        One line per problem: schema violations and the cross-key rules below.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{source}: {_describe(e, schema)}."
        for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise InputError("invalid configuration:\n" + "\n".join(problems))
    _fill_defaults(schema, config)
    clustering = config["clustering"]
    if clustering["default_resolution"] not in clustering["resolutions"]:
        problems.append(
            f"{source}: clustering.default_resolution = {clustering['default_resolution']} is not among "
            f"clustering.resolutions {clustering['resolutions']}. Fix: add it to the list or pick one of them."
        )
    if config["annotation"]["resolution"] not in clustering["resolutions"]:
        problems.append(
            f"{source}: annotation.resolution = {config['annotation']['resolution']} is not among "
            f"clustering.resolutions {clustering['resolutions']}. Fix: add it to the list or pick one of them."
        )
    contrast = config["contrast"]
    if contrast["reference"] == contrast["treated"]:
        problems.append(
            f"{source}: contrast.reference and contrast.treated are both {contrast['reference']!r}. "
            "Fix: name two different levels of the contrast column."
        )
    if contrast["column"] == contrast["pair_by"]:
        problems.append(
            f"{source}: contrast.column and contrast.pair_by are both {contrast['column']!r}. "
            "Fix: pair_by must be the patient/donor column."
        )
    if config["integration"]["method"] != "none" and config["integration"]["key"] in (contrast["column"], "timepoint"):
        problems.append(
            f"{source}: integration.key = {config['integration']['key']!r} is the treatment contrast; "
            "integrating on it would erase the effect under test. Fix: use a technical batch column (batch)."
        )
    if config["neighbors"]["n_pcs"] > config["pca"]["n_comps"]:
        problems.append(
            f"{source}: neighbors.n_pcs = {config['neighbors']['n_pcs']} exceeds pca.n_comps = "
            f"{config['pca']['n_comps']}. Fix: lower n_pcs or raise n_comps."
        )
    for pattern_key in ("mito_pattern", "ribo_pattern", "hb_pattern"):
        _check_regex(config["qc"][pattern_key], f"qc.{pattern_key}", source, problems)
    for i, pattern in enumerate(config["hvg"]["exclude_patterns"]):
        _check_regex(pattern, f"hvg.exclude_patterns[{i}]", source, problems)
    if problems:
        raise InputError("invalid configuration:\n" + "\n".join(problems))
    return config


def _check_regex(pattern: str, key: str, source: str, problems: list[str]) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        problems.append(f"{source}: {key} = {pattern!r} is not a valid regular expression ({exc}). Fix: correct it.")

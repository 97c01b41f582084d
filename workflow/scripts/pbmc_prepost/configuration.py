"""Validate the workflow configuration against its JSON schema and fill in defaults.

Snakemake's own ``validate`` reports the first schema error in jsonschema's words; users get every
problem at once here, each naming the config file, the key, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import re
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


def _schema_order(schema: dict, config: dict) -> dict:
    """``config`` with its keys in the schema's order (recursively), whatever order the config files
    gave them in: Snakemake compares a rule's params by their text, so the same settings must
    always print the same way."""
    properties = schema.get("properties", {})
    ordered = {}
    for key in [*properties, *(k for k in config if k not in properties)]:
        if key not in config:
            continue
        value, sub = config[key], properties.get(key, {})
        ordered[key] = _schema_order(sub, value) if isinstance(value, dict) and "properties" in sub else value
    return ordered


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
        if error.validator_value == "object" and isinstance(error.instance, str):
            return (
                f"{key} = {error.instance!r} should be a section (key: value pairs), not text. Fix: put it in a "
                f"YAML file given with --configfile, e.g. `{key}: {{...}}` (snakemake --config passes nested "
                "values as text)"
            )
        return f"{key} = {error.instance!r} should be of type {error.validator_value}. Fix: correct the value's type"
    description = error.schema.get("description", "")
    return f"{key}: {error.message}. Fix: see the schema{': ' + description if description else ''}"


def validate_config(
    config: dict[str, Any],
    schema_path: str | Path,
    source: str = "config/config.yaml",
    warnings: list[str] | None = None,
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
    warnings
        When given, messages that do not stop the run are appended (the old ``contrast`` block).

    Raises
    ------
    InputError
        One line per problem: schema violations and the cross-key rules below.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(dict(config))
    warnings = [] if warnings is None else warnings
    _parse_text_sections(config, schema, source, warnings)
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
    _resolve_old_contrast(config, schema, source, warnings)
    _check_design(config, source, problems)
    design = config["design"]
    if config["integration"]["method"] != "none" and config["integration"]["key"] in (design["column"], "timepoint"):
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
    return _schema_order(schema, config)


def _check_regex(pattern: str, key: str, source: str, problems: list[str]) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        problems.append(f"{source}: {key} = {pattern!r} is not a valid regular expression ({exc}). Fix: correct it.")


def _resolve_old_contrast(config: dict, schema: dict, source: str, warnings: list[str]) -> None:
    """Read the old one-contrast block ``contrast: {column, reference, treated, pair_by}``.

    It becomes ``design.column``/``pair_by`` and one contrast ``<treated>_vs_<reference>``, except
    where the config sets ``design`` or ``contrasts`` to something other than their defaults (for
    example in a second ``--configfile``): what is set explicitly wins.
    """
    old = config.pop("contrast", None)
    if old is None:
        return
    defaults = schema["properties"]
    design_default = {k: v.get("default") for k, v in defaults["design"]["properties"].items()}
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{old['treated']}_vs_{old['reference']}").strip("_") or "contrast"
    converted = [{"name": name, "reference": old["reference"], "treated": old["treated"]}]
    used = []
    for key in ("column", "pair_by"):
        if config["design"][key] == design_default[key]:
            config["design"][key] = old[key]
            used.append(f"design.{key}")
    if config["contrasts"] == defaults["contrasts"]["default"]:
        config["contrasts"] = converted
        used.append("contrasts")
    warnings.append(
        f"{source}: the `contrast` block is the old form of the design (read as "
        f"{', '.join(used) or 'nothing: design and contrasts are set'}). Fix: write "
        f"`design: {{column: {old['column']}, pair_by: {old['pair_by']}}}` and "
        f"`contrasts: [{{name: {name}, reference: {old['reference']}, treated: {old['treated']}}}]` instead"
    )


#: Folder names under results/de/ that a contrast may not take.
RESERVED_CONTRAST_NAMES = ("pseudobulk", "per_population", "summary")


def _check_design(config: dict, source: str, problems: list[str]) -> None:
    """Cross-key rules of ``design`` and ``contrasts`` (the sheet's values are checked with the sheet)."""
    design = config["design"]
    if design["column"] == design["pair_by"]:
        problems.append(
            f"{source}: design.column and design.pair_by are both {design['column']!r}. "
            "Fix: pair_by must be the patient/donor column."
        )
    special = {"design.column": design["column"], "design.pair_by": design["pair_by"], "design.arm": design["arm"]}
    for i, covariate in enumerate(design["covariates"]):
        clash = [k for k, v in special.items() if v == covariate]
        if clash:
            problems.append(
                f"{source}: design.covariates[{i}] = {covariate!r} is also {clash[0]}. "
                "Fix: list only other sheet columns as covariates."
            )
    if design["arm"] is not None and design["arm"] in (design["column"], design["pair_by"]):
        problems.append(
            f"{source}: design.arm = {design['arm']!r} is also the timepoint or patient column. "
            "Fix: name the sheet column that holds each donor's arm."
        )
    seen: dict[str, int] = {}
    for i, contrast in enumerate(config["contrasts"]):
        key = f"contrasts[{i}] ({contrast['name']})"
        if contrast["name"] in seen:
            problems.append(
                f"{source}: {key}: the name is also used by contrasts[{seen[contrast['name']]}]. "
                "Fix: give every contrast its own name (it names the output folders)."
            )
        seen.setdefault(contrast["name"], i)
        if contrast["name"] in RESERVED_CONTRAST_NAMES:
            problems.append(
                f"{source}: {key}: the name is reserved (results/de/{contrast['name']}/ holds other outputs). "
                "Fix: choose another name, e.g. post_vs_pre."
            )
        if str(contrast["reference"]) == str(contrast["treated"]):
            problems.append(
                f"{source}: {key}: reference and treated are both {contrast['reference']!r}. "
                f"Fix: name two different levels of {design['column']}."
            )
        if contrast.get("arm") is not None and design["arm"] is None:
            problems.append(
                f"{source}: {key} names arm {contrast['arm']!r} but design.arm is not set. "
                "Fix: set design.arm to the sheet column that holds each donor's arm."
            )
        if contrast.get("versus_arm") is not None and contrast.get("arm") is None:
            problems.append(
                f"{source}: {key} names versus_arm {contrast['versus_arm']!r} without arm. "
                "Fix: add `arm:` (the treated arm) to this contrast."
            )
        if contrast.get("versus_arm") is not None and str(contrast["versus_arm"]) == str(contrast.get("arm")):
            problems.append(
                f"{source}: {key}: arm and versus_arm are both {contrast['arm']!r}. Fix: name two different arms."
            )


def _parse_text_sections(config: dict, schema: dict, source: str, warnings: list[str], prefix: str = "") -> None:
    """Values that arrive as text where the schema wants a section, a number, a flag or a list are
    read as YAML when that gives the wanted type; anything else is left for the schema to refuse.

    ``snakemake --config doublets='{mean_center: true}'`` passes the braces as a string, and a
    nested value such as ``merge='{min_cells_per_sample: 500}'`` arrives as ``'500'``. A section
    read this way is named in a warning (the form that always works is a --configfile).
    """
    wanted = {"object": (dict,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,)}
    for key, sub in schema.get("properties", {}).items():
        value = config.get(key)
        kinds = sub.get("type")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        if isinstance(value, dict) and "object" in kinds:
            _parse_text_sections(value, sub, source, warnings, f"{prefix}{key}.")
            continue
        if not isinstance(value, str) or "string" in kinds or not kinds:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            continue
        types = tuple(t for kind in kinds for t in wanted.get(kind, ()))
        if not types or not isinstance(parsed, types) or (isinstance(parsed, bool) and "boolean" not in kinds):
            continue
        config[key] = parsed
        if isinstance(parsed, dict):
            _parse_text_sections(parsed, sub, source, warnings, f"{prefix}{key}.")
            warnings.append(
                f"{source}: `{prefix}{key}` arrived as text ({value!r}) and was read as YAML, giving "
                f"{parsed!r}. Fix: nothing, if that is what you meant; the form that always works is the "
                f"section in a YAML file given with --configfile"
            )

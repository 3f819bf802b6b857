"""Rules files as data: validate parsed documents and build one immutable RuleSet.

The parser (an adapter) hands over plain mappings; a mapping may carry `line` (where it starts) and
`key_lines` (where each key is) so every problem is reported as file:line with the rule's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .alert_templates import template_error
from .domain import Direction, ModelSpec, Rule, RuleGroup, RuleSet
from .durations import parse_duration
from .errors import Problem, RuleError
from .excursions import NEW_NORMAL_AFTER
from .presets import PRESETS, Preset

GROUP_KEYS = {"name", "interval", "rules"}
RULE_KEYS = {
    "anomaly", "expr", "step", "model", "train", "forecast", "direction",
    "min_history", "max_series", "labels", "annotations", "preset", "repeat_window",
    "new_normal_after", "calibrate", "settle_after", "for",
}
MODEL_KEYS = {"engine", "name", "params"}
TRAIN_KEYS = {"window", "every"}
FORECAST_KEYS = {"horizon", "level"}
DEFAULT_INTERVAL = 60.0
RULE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# what is wrong with a rule's expr, as the rule's problem says it; None when the PromQL is valid
ExprChecker = Callable[[str], "str | None"]
ModelChecker = Callable[[ModelSpec], None]  # raises ValueError when no engine can build the spec
# An engine as a rule names it (an alias included) -> its default model under the engine's own name;
# raises ValueError for an unknown engine
EngineDefaults = Callable[[str], ModelSpec]
# The preset of rules that name none, and the word that opts out of presets (the plain defaults below)
DEFAULT_PRESET = "default"
NO_PRESET = "none"
PLAIN = Preset(model=ModelSpec("", ""), train_window=14 * 86400.0, train_every=86400.0, horizon=3600.0, level=99.0,
               min_history=86400.0, repeat_window=0.0)


@runtime_checkable
class BatchExprChecker(Protocol):
    """An ExprChecker that can also check many exprs at once, remembering the answers for the calls after."""

    def __call__(self, expr: str) -> str | None: ...

    def check_all(self, exprs: Sequence[str]) -> Mapping[str, str | None]: ...


@dataclass(frozen=True)
class SourceDocument:
    """One parsed rules file."""

    path: str
    content: Any


@dataclass
class _Context:
    file: str
    default_model: ModelSpec
    check_expr: ExprChecker
    check_model: ModelChecker
    engine_defaults: EngineDefaults | None = None
    problems: list[Problem] = field(default_factory=list)
    rule: str = ""
    near: int = 1  # the line of the list item being checked: where a value that carries no line is

    def report(self, message: str, node: Any = None, key: str | None = None) -> None:
        self.problems.append(Problem(message, self.file, _line(node, key) or self.near, self.rule))


def build_rule_set(
    documents: Sequence[SourceDocument],
    default_model: ModelSpec,
    check_expr: ExprChecker = lambda expr: None,
    check_model: ModelChecker = lambda spec: None,
    engine_defaults: EngineDefaults | None = None,
) -> RuleSet:
    """Validate every document and build the rule set; raise RuleError listing every problem.

    `default_model` is the model of rules that name none when it is not the default preset's engine (the
    preset's model wins on its own engine); `engine_defaults` gives a rule that names only an engine its
    default model (without it, such a rule must name the model too)."""
    problems: list[Problem] = []
    groups: list[RuleGroup] = []
    if isinstance(check_expr, BatchExprChecker):  # one round trip for the whole load, then answers per rule
        check_expr.check_all([expr for document in documents for expr in _exprs(document.content)])
    for document in documents:
        ctx = _Context(document.path, default_model, check_expr, check_model, engine_defaults)
        groups.extend(_groups(document.content, ctx))
        problems.extend(sorted(ctx.problems, key=lambda p: p.line))  # in line order, stable within a line
    problems.extend(_duplicate_rules(groups))
    if problems:
        raise RuleError(problems)
    return RuleSet(tuple(groups))


def _exprs(content: Any) -> list[str]:
    """The exprs of a document's rules, wherever they are well enough formed to be found."""
    groups = content.get("groups") if isinstance(content, Mapping) else None
    rules = [g.get("rules") for g in groups if isinstance(g, Mapping)] if isinstance(groups, list) else []
    found = [r.get("expr") for group in rules if isinstance(group, list) for r in group if isinstance(r, Mapping)]
    return [e for e in found if isinstance(e, str) and e.strip()]


def _groups(content: Any, ctx: _Context) -> list[RuleGroup]:
    if content is None:
        return []
    if not isinstance(content, Mapping) or set(content) != {"groups"}:
        ctx.report("a rules file must be a mapping with the single key 'groups'", content)
        return []
    if not isinstance(content["groups"], list):
        ctx.report("'groups' must be a list", content, "groups")
        return []
    groups, seen = [], set()
    for i, node in enumerate(content["groups"]):
        ctx.near = _item_line(content["groups"], i, ctx.near)
        group = _group(node, ctx)
        if group and group.name in seen:
            ctx.report(f'group name "{group.name}" is repeated in the same file', node, "name")
        elif group:
            seen.add(group.name)
            groups.append(group)
    return groups


def _group(node: Any, ctx: _Context) -> RuleGroup | None:
    """The group, or None when anything in it is wrong; its rules are checked even when the group is not."""
    ctx.rule = ""
    if not _is_mapping(node, "a group", ctx):
        return None
    keys_ok = _known_keys(node, GROUP_KEYS, "group", ctx)
    name = node.get("name")
    if not isinstance(name, str) or not name:
        ctx.report("group must have a non-empty 'name'", node)
        name = None
    interval = _duration(node, "interval", DEFAULT_INTERVAL, ctx)
    rules_node = node.get("rules", [])
    if not isinstance(rules_node, list):
        ctx.report(f'group "{name or ""}": \'rules\' must be a list', node, "rules")
        return None
    rules = []
    for i, rule_node in enumerate(rules_node):
        ctx.near = _item_line(rules_node, i, ctx.near)
        rules.append(_checked_rule(rule_node, name or "", interval, ctx))
    if not keys_ok or name is None:
        return None
    return RuleGroup(name, interval or DEFAULT_INTERVAL, tuple(r for r in rules if r), ctx.file)


def _checked_rule(node: Any, group: str, interval: float | None, ctx: _Context) -> Rule | None:
    """The rule, with any failure of validation itself reported at the rule instead of raised."""
    try:
        return _rule(node, group, interval, ctx)
    except Exception as e:  # noqa: BLE001 - a checker that fails is a problem of this rule, not of the load
        ctx.report(f"cannot check this rule: {type(e).__name__}: {e}", node)
        return None


def _rule(node: Any, group: str, interval: float | None, ctx: _Context) -> Rule | None:
    ctx.rule = ""
    if not _is_mapping(node, "a rule", ctx):
        return None
    name = node.get("anomaly")
    if not isinstance(name, str) or not RULE_NAME.match(name):
        ctx.report("rule needs 'anomaly: <name>' (letters, digits, _ and :)", node, "anomaly")
        return None
    ctx.rule = name
    before = len(ctx.problems)
    _known_keys(node, RULE_KEYS, "rule", ctx)
    preset = _preset(node, ctx) or PLAIN
    expr = _expr(node, ctx)
    step = _duration(node, "step", interval or DEFAULT_INTERVAL, ctx)
    model = _model(node, ctx, preset)
    train = _section(node, "train", TRAIN_KEYS, ctx)
    forecast = _section(node, "forecast", FORECAST_KEYS, ctx)
    window = _duration(train, "window", preset.train_window, ctx)
    every = _duration(train, "every", preset.train_every, ctx)
    horizon = _duration(forecast, "horizon", preset.horizon, ctx)
    level = _level(forecast, ctx, preset.level)
    # a window the rule shortened below the preset's warm-up: ready once the window is full
    min_history = _duration(node, "min_history", min(preset.min_history, window or preset.min_history), ctx)
    repeat_window = _optional_duration(node, "repeat_window", preset.repeat_window, ctx)
    new_normal_after = _optional_duration(node, "new_normal_after", _new_normal_after(preset, model), ctx)
    calibrate = _optional_duration(node, "calibrate", preset.calibrate, ctx)
    settle_after = _optional_duration(node, "settle_after", preset.settle_after, ctx)
    alert_for = _optional_duration(node, "for", 0.0, ctx) if "for" in node else None
    direction = _direction(node, ctx)
    max_series = _positive_int(node, "max_series", 10000, ctx)
    labels = _labels(node, "labels", ctx)
    annotations = _labels(node, "annotations", ctx)
    if len(ctx.problems) > before:
        return None
    assert step and window and every and horizon and min_history and level and model and expr
    if min_history > window:
        ctx.report("min_history is longer than train.window: no series could ever be ready", node, "min_history")
    if horizon < step:
        ctx.report("forecast.horizon must be at least one step", forecast, "horizon")
    if window < 2 * step:
        ctx.report("train.window must cover at least two steps", train, "window")
    if len(ctx.problems) > before:
        return None
    return Rule(
        name=name, group=group, expr=expr, step=step, model=model, train_window=window, train_every=every,
        horizon=horizon, level=level, direction=direction, min_history=min_history, max_series=max_series,
        labels=labels, file=ctx.file, line=_line(node), repeat_window=repeat_window or 0.0,
        annotations=annotations,
        new_normal_after=new_normal_after or 0.0, calibrate=calibrate or 0.0, settle_after=settle_after or 0.0,
        alert_for=alert_for,
    )


def _expr(node: Mapping, ctx: _Context) -> str | None:
    expr = node.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        ctx.report("'expr' must be a non-empty PromQL expression", node, "expr")
        return None
    error = ctx.check_expr(expr)
    if error:
        ctx.report(error, node, "expr")
        return None
    return expr


def _preset(node: Mapping, ctx: _Context) -> Preset | None:
    """The rule's preset: the one it names, none for `preset: none`, the default preset when it names none."""
    name = node.get("preset", DEFAULT_PRESET)
    if name == NO_PRESET:
        return PLAIN
    if not isinstance(name, str) or name not in PRESETS:
        ctx.report(f"unknown preset {name!r} (available: {', '.join(sorted(PRESETS))}, or {NO_PRESET} for the "
                   "plain defaults)", node, "preset")
        return None
    return PRESETS[name]


def _model(node: Mapping, ctx: _Context, preset: Preset) -> ModelSpec | None:
    # a rule naming no model takes its preset's, whole; without a preset named, only on the preset's engine
    # (--model.engine set to another engine gives that engine's default model)
    uses_preset_model = preset is not PLAIN and ("preset" in node or preset.model.engine == ctx.default_model.engine)
    if uses_preset_model and "model" not in node:
        try:
            ctx.check_model(preset.model)
        except ValueError as e:
            ctx.report(f"preset model: {e}", node, "preset")
            return None
        return preset.model
    section = _section(node, "model", MODEL_KEYS, ctx)
    engine = section.get("engine", ctx.default_model.engine)
    if not isinstance(engine, str):
        ctx.report("model.engine must be a string", section, "engine")
        return None
    base = _engine_default(engine, section, ctx)
    if base is None:
        return None
    name = section.get("name", base.name)
    params = section.get("params", {} if "name" in section else base.params)
    if not isinstance(name, str) or not name:
        ctx.report("model.name must be a string", section, "name")
        return None
    if not isinstance(params, Mapping):
        ctx.report("model.params must be a mapping", section, "params")
        return None
    spec = ModelSpec(base.engine, name, dict(params))
    try:
        ctx.check_model(spec)
    except ValueError as e:
        ctx.report(f"model: {e}", section or node, "name" if "name" in section else None)
        return None
    return spec


def _engine_default(engine: str, section: Mapping, ctx: _Context) -> ModelSpec | None:
    """The default model of the engine the rule names, under the engine's own name (an alias resolved)."""
    if engine == ctx.default_model.engine:
        return ctx.default_model
    if ctx.engine_defaults is None:  # no engine catalogue: the rule must name its model
        if "name" not in section:
            ctx.report("model needs 'name' when it names an engine other than the default", section)
            return None
        return ModelSpec(engine, "")
    try:
        base = ctx.engine_defaults(engine)
    except ValueError as e:
        ctx.report(f"model: {e}", section, "engine")
        return None
    return ctx.default_model if base.engine == ctx.default_model.engine else base


def _section(node: Mapping, key: str, allowed: set[str], ctx: _Context) -> Mapping:
    section = node.get(key, {})
    if not isinstance(section, Mapping):
        ctx.report(f"'{key}' must be a mapping", node, key)
        return {}
    _known_keys(section, allowed, key, ctx)
    return section


def _duration(node: Mapping, key: str, default: float, ctx: _Context) -> float | None:
    if key not in node:
        return default
    try:
        return parse_duration(node[key])
    except ValueError as e:
        ctx.report(f"{key}: {e}", node, key)
        return None


def _new_normal_after(preset: Preset, model: ModelSpec | None) -> float:
    """The preset's bound was chosen for its own model; a rule on another model gets the plain one."""
    return preset.new_normal_after if model == preset.model else NEW_NORMAL_AFTER


def _optional_duration(node: Mapping, key: str, default: float, ctx: _Context) -> float | None:
    """A duration, or 0 / "off" for none."""
    if node.get(key) in (0, "0", "off"):
        return 0.0
    return _duration(node, key, default, ctx)


def _level(node: Mapping, ctx: _Context, default: float = 99.0) -> float | None:
    level = node.get("level", default)
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 100:
        ctx.report("forecast.level must be a number strictly between 0 and 100 (a percentage)", node, "level")
        return None
    return float(level)


def _direction(node: Mapping, ctx: _Context) -> Direction:
    value = node.get("direction", "both")
    try:
        return Direction(value)
    except ValueError:
        ctx.report(f"direction must be one of both, above, below (got {value!r})", node, "direction")
        return Direction.BOTH


def _positive_int(node: Mapping, key: str, default: int, ctx: _Context) -> int:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        ctx.report(f"{key} must be a positive integer", node, key)
        return default
    return value


def _labels(node: Mapping, key: str, ctx: _Context) -> dict[str, str]:
    section = node.get(key, {})
    if not isinstance(section, Mapping):
        ctx.report(f"'{key}' must be a mapping of names to strings", node, key)
        return {}
    labels = {}
    for name, value in section.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name) or name.startswith("__"):
            ctx.report(f"{key}: invalid label name {name!r}", section, name)
        elif key == "labels" and name == "rule":
            ctx.report("labels: 'rule' is reserved: it carries the rule's name", section, name)
        elif isinstance(value, Mapping | list) or value is None:
            ctx.report(f"{key}: value of {name!r} must be a string", section, name)
        elif error := template_error(str(value)):  # alerts generated from the rule carry it as a template
            where = f" (line {error.line} of its text)" if "\n" in str(value).strip() else ""
            ctx.report(f"{key}: {name!r} is not a valid Prometheus alert template{where}: {error}", section, name)
        else:
            labels[name] = str(value)
    return labels


def _known_keys(node: Mapping, allowed: set[str], what: str, ctx: _Context) -> bool:
    unknown = [k for k in node if k not in allowed]
    for key in unknown:
        ctx.report(f"unknown {what} key {key!r} (allowed: {', '.join(sorted(allowed))})", node, key)
    return not unknown


def _is_mapping(node: Any, what: str, ctx: _Context) -> bool:
    if isinstance(node, Mapping):
        return True
    ctx.report(f"{what} must be a mapping, got {type(node).__name__}", node)
    return False


def _duplicate_rules(groups: list[RuleGroup]) -> list[Problem]:
    seen: dict[str, Rule] = {}
    problems = []
    for rule in (r for g in groups for r in g.rules):
        first = seen.setdefault(rule.name, rule)
        if first is not rule:
            where = f"{first.file}:{first.line}"
            problems.append(Problem(f"rule name is not unique (first defined at {where})", rule.file, rule.line,
                                    rule.name))
    return problems


def _item_line(items: list, index: int, default: int) -> int:
    lines = getattr(items, "item_lines", None)
    return int(lines[index]) if lines and index < len(lines) else default


def _line(node: Any, key: str | None = None) -> int:
    if key is not None:
        line = getattr(node, "key_lines", {}).get(key)
        if line:
            return int(line)
    return int(getattr(node, "line", 0))

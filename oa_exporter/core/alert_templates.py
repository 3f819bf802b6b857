"""Prometheus alert templates, checked offline as Prometheus parses them when it loads an alerting rule.

Prometheus expands `{{ $labels.pod }}`, `{{ $value | humanize }}` and the like in an alert's annotations and
labels with Go's text/template, after defining `$labels`, `$externalLabels`, `$externalURL` and `$value`.
It refuses a rules file whose templates do not parse: a syntax error, an unknown function, an undefined
variable, an `{{if}}` without its `{{end}}`. This module reproduces that parse (the lexer and parser of Go's
text/template/parse, without building a tree) so that `oa-exporter check` reports such a template at its
file:line instead of Prometheus refusing the alerts generated from it. It accepts the functions of every
Prometheus release since 2.0 (a function only a newer release has passes here); what Go checks only when a
template runs (a missing label, a wrong argument type) passes here as it passes Prometheus's load.
"""

from __future__ import annotations

import json
import re

from .template_lexer import TemplateError, Token, lex

# Go's text/template built-in functions, then Prometheus's (template/template.go, all releases since 2.0)
FUNCTIONS = frozenset({
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println", "urlquery",
    "eq", "ge", "gt", "le", "lt", "ne",
    "query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml", "match", "title",
    "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel", "humanize", "humanize1024",
    "humanizeDuration", "humanizePercentage", "humanizeTimestamp", "toTime", "toDuration", "now", "pathPrefix",
    "externalURL", "parseDuration", "stripPort", "stripDomain", "urlQueryEscape",
})
# what Prometheus defines before the text of every alert template
PRELUDE = ("{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}"
           "{{$value := .Value}}")


def template_error(text: str) -> TemplateError | None:
    """Why Prometheus would refuse `text` as an alert template (annotation or label value), or None."""
    if "{{" not in text:
        return None
    try:
        _Parser(lex(PRELUDE + text)).parse()
    except TemplateError as e:
        return e
    return None


_ESCAPE = re.compile(r'\\(?:[abfnrtv\\"]|x[0-9a-fA-F]{2}|[0-7]{3}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')


def _unquotes(token: str) -> bool:
    """Whether Go's strconv.Unquote accepts this double-quoted literal."""
    body = token[1:-1]
    for match in re.finditer(r"\\.?", body, re.DOTALL):
        escape = _ESCAPE.match(body, match.start())
        if not escape:
            return False
        code = escape.group()
        if code[1] in "uU" and (0xD800 <= int(code[2:], 16) <= 0xDFFF or int(code[2:], 16) > 0x10FFFF):
            return False
        if code[1] in "01234567" and int(code[1:], 8) > 255:
            return False
    return True


def _number_error(text: str) -> str | None:
    """Why Go's text/template refuses this number token (an integer, a float or a complex number), or None."""
    body = text[1:] if text[:1] in "+-" else text
    if body.endswith("i"):  # complex: its real or imaginary part
        return None if body[:-1] and _number_error(body[:-1]) is None else f"illegal number syntax: {text!r}"
    if "__" in body or body.startswith("_") or body.endswith("_"):
        return f"illegal number syntax: {text!r}"
    try:
        value = int(body, 0)
    except ValueError:
        value = None
    if value is None and re.fullmatch(r"0[0-7_]+", body):  # Go's legacy octal, 0755
        value = int(body.replace("_", ""), 8)
    if value is not None:
        return None if value <= (1 << 64) - 1 else f"integer overflow: {text!r}"
    for parse in (float, float.fromhex):
        try:
            parse(body)
        except ValueError:
            continue
        return None if re.search(r"[.eEpP]", body) else f"integer overflow: {text!r}"
    return f"illegal number syntax: {text!r}"


def _char_error(token: str) -> str | None:
    """Why Go refuses this character constant ('a', '\\n'), or None."""
    body = token[1:-1]
    if len(body) == 1 and body not in "'\\" or re.fullmatch(_ESCAPE.pattern + "|\\\\'", body):
        return None
    return f"malformed character constant: {token}"


# what may begin an operand of a command
_OPERANDS = {"bool", "char", "dot", "field", "ident", "number", "nil", "raw", "string", "variable", "lparen"}


class _Parser:
    """Go's text/template parser (parse.go), checking what it checks and building nothing."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def fail(self, message: str, token: Token | None = None) -> TemplateError:
        return TemplateError(message, (token or self.tokens[max(self.i - 1, 0)]).line)

    def next(self) -> Token:
        token = self.tokens[self.i]
        if token.kind == "error":
            raise self.fail(token.value, token)
        self.i += 1
        return token

    def backup(self, n: int = 1) -> None:
        self.i -= n

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        token = self.next()
        while token.kind == "space":
            token = self.next()
        return token

    def peek_non_space(self) -> Token:
        token = self.next_non_space()
        self.backup()
        return token

    def unexpected(self, token: Token, context: str) -> TemplateError:
        if token.kind == "error":
            return self.fail(token.value, token)
        return self.fail(f"unexpected {token.describe()} in {context}", token)

    def expect(self, kind: str, context: str) -> Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.unexpected(token, context)
        return token

    def parse(self) -> None:
        while self.peek().kind != "eof":
            if self.peek().kind == "left":
                mark = self.i
                self.next()
                if self.next_non_space().kind == "define":
                    self.definition()
                    continue
                self.i = mark
            node = self.text_or_action()
            if node in ("end", "else"):
                raise self.fail(f"unexpected {{{{{node}}}}}")

    def definition(self) -> None:
        token = self.next_non_space()
        if token.kind not in ("string", "raw"):
            raise self.unexpected(token, "define clause")
        self.expect("right", "define clause")
        self.scoped_body("define clause")

    def item_list(self) -> str:
        """Parse up to an {{end}} or {{else}}, returning which."""
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if node in ("end", "else"):
                return node
        raise self.fail("unexpected EOF", self.peek())

    def text_or_action(self) -> str:
        token = self.next_non_space()
        if token.kind == "text":
            return "text"
        if token.kind == "left":
            return self.action()
        raise self.unexpected(token, "input")

    def action(self) -> str:
        token = self.next_non_space()
        kind = token.kind
        if kind in ("break", "continue"):
            if not self.range_depth:
                raise self.fail(f"{{{{{kind}}}}} outside {{{{range}}}}", token)
            self.expect("right", kind)
        elif kind == "else":
            if self.peek_non_space().kind not in ("if", "with"):
                self.expect("right", "else")
            return "else"
        elif kind == "end":
            self.expect("right", "end")
            return "end"
        elif kind in ("if", "range", "with"):
            self.control(kind)
        elif kind == "template":
            self.template("template clause")
        elif kind == "block":
            self.block()
        else:
            self.backup()
            self.pipeline("command", "right")
        return "action"

    def control(self, context: str) -> None:
        depth = len(self.vars)
        self.pipeline(context, "right")
        self.range_depth += context == "range"
        node = self.item_list()
        self.range_depth -= context == "range"
        if node == "else":
            if context in ("if", "with") and self.peek_non_space().kind == context:
                self.next_non_space()
                self.control(context)  # {{else if}}: the nested if's {{end}} ends this one too
            elif self.item_list() != "end":
                raise self.fail("expected end; found {{else}}")
        del self.vars[depth:]

    def template(self, context: str) -> None:
        token = self.next_non_space()
        if token.kind not in ("string", "raw"):
            raise self.unexpected(token, context)
        if token.kind == "string" and not _unquotes(token.value):
            raise self.fail("invalid syntax", token)
        if self.next_non_space().kind != "right":
            self.backup()
            self.pipeline(context, "right")

    def block(self) -> None:
        token = self.next_non_space()
        if token.kind not in ("string", "raw"):
            raise self.unexpected(token, "block clause")
        self.pipeline("block clause", "right")
        self.scoped_body("block clause")

    def scoped_body(self, clause: str) -> None:
        """The items of a define or block up to its {{end}}, with variables of their own (only `$`)."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        if self.item_list() != "end":
            raise self.fail(f"unexpected {{{{else}}}} in {clause}")
        self.vars, self.range_depth = saved

    def pipeline(self, context: str, end: str) -> None:
        declarations = 0
        while self.peek_non_space().kind == "variable":
            mark = self.i
            variable = self.next()
            following = self.peek_non_space()
            if following.kind in ("assign", "declare"):
                self.next_non_space()
                self.vars.append(variable.value)
                break
            if following.kind == "item" and following.value == ",":
                self.next_non_space()
                declarations += 1
                if context == "range" and declarations < 2:
                    if self.peek_non_space().kind in ("variable", "right", "rparen"):
                        self.vars.append(variable.value)
                        continue
                    raise self.fail("range can only initialize variables")
                raise self.fail(f"too many declarations in {context}")
            self.i = mark  # an operand, not a declaration
            break
        commands: list[str] = []
        while True:
            token = self.next_non_space()
            if token.kind == end:
                self.check_pipeline(commands, context, token)
                return
            if token.kind not in _OPERANDS:
                raise self.unexpected(token, context)
            self.backup()
            commands.append(self.command())

    def check_pipeline(self, commands: list[str], context: str, token: Token) -> None:
        if not commands:
            raise self.fail(f"missing value for {context}", token)
        for stage, first in enumerate(commands[1:], start=2):
            if first in ("bool", "dot", "nil", "number", "string"):
                raise self.fail(f"non executable command in pipeline stage {stage}", token)

    def command(self) -> str:
        """Parse one command; return the kind of its first operand."""
        first = ""
        while True:
            self.peek_non_space()
            operand = self.operand()
            first = first or operand
            token = self.next()
            if token.kind == "space":
                continue
            if token.kind in ("right", "rparen"):
                self.backup()
            elif token.kind != "pipe":
                raise self.unexpected(token, "operand")
            break
        if not first:
            raise self.fail("empty command")
        return first

    def operand(self) -> str:
        term = self.peek_non_space()
        kind = self.term()
        if kind and self.peek().kind == "field":
            while self.peek().kind == "field":
                self.next()
            if kind in ("bool", "string", "number", "nil", "dot"):
                raise self.fail(f"unexpected . after term {json.dumps(term.value)}", term)
            kind = kind if kind in ("field", "variable") else "chain"
        return kind

    def term(self) -> str:
        token = self.next_non_space()
        kind = token.kind
        if kind == "ident":
            if token.value not in FUNCTIONS:
                raise self.fail(f'function "{token.value}" not defined', token)
        elif kind == "variable":
            name = token.value.split(".")[0]
            if name not in self.vars:
                raise self.fail(f'undefined variable "{name}"', token)
        elif kind in ("char", "number"):
            error = _char_error(token.value) if kind == "char" else _number_error(token.value)
            if error:
                raise self.fail(error, token)
            kind = "number"
        elif kind == "lparen":
            self.pipeline("parenthesized pipeline", "rparen")
            return "pipeline"
        elif kind in ("string", "raw"):
            if kind == "string" and not _unquotes(token.value):
                raise self.fail("invalid syntax", token)
            kind = "string"
        elif kind not in ("dot", "nil", "field", "bool"):
            self.backup()
            return ""
        return kind

"""Go's text/template lexer (text/template/parse/lex.go) with the default delimiters: the tokens the alert
template check (alert_templates.py) parses; an error ends the tokens with an `error` one."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"}
_SPACE = " \t\r\n"


class TemplateError(ValueError):
    """A template Prometheus would refuse; `line` is the line of the template's text where the parse stopped."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Token:
    kind: str  # text, left, right, space, assign, declare, pipe, string, raw, char, number, bool, ident, field,
    # variable, dot, lparen, rparen, item (a printable character, e.g. ","), a keyword, eof, error
    value: str
    line: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "EOF"
        if self.kind == "error":
            return self.value
        if self.kind in KEYWORDS:
            return f"<{self.value}>"
        return json.dumps(self.value[:10]) + ("..." if len(self.value) > 10 else "")


def _alphanumeric(c: str) -> bool:
    return c == "_" or c.isalpha() or unicodedata.category(c) == "Nd"


class _Lexer:
    """Go's text/template lexer with the default delimiters; an error ends the tokens with an `error` one."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1
        self.parens = 0
        self.tokens: list[Token] = []

    def emit(self, kind: str, start: int) -> None:
        value = self.text[start:self.pos]
        self.tokens.append(Token(kind, value, self.line))
        self.line += value.count("\n")

    def fail(self, message: str) -> list[Token]:
        self.tokens.append(Token("error", message, self.line))
        return self.tokens

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def run(self) -> list[Token]:
        while True:
            start = self.pos
            found = self.text.find("{{", self.pos)
            if found < 0:
                self.pos = len(self.text)
                if self.pos > start:
                    self.emit("text", start)
                self.tokens.append(Token("eof", "", self.line))
                return self.tokens
            self.pos = found
            if self.pos > start:
                self.emit("text", start)
            if not self.action():
                return self.tokens

    def at_right(self) -> int:
        """Length of the right delimiter here (with its trim marker), 0 when there is none."""
        rest = self.text[self.pos:self.pos + 4]
        if len(rest) >= 4 and rest[0] in _SPACE and rest[1:] == "-}}":
            return 4
        return 2 if rest.startswith("}}") else 0

    def action(self) -> bool:
        """Lex one action from its `{{`; False when it ended in an error."""
        start = self.pos
        self.pos += 2
        trim = 2 if self.peek() == "-" and self.peek(1) in _SPACE and self.peek(1) else 0
        if self.text.startswith("/*", self.pos + trim):
            return self.comment(start, trim)
        self.pos += trim
        self.emit("left", start)
        while True:
            right = self.at_right()
            if right:
                if self.parens:
                    self.fail("unclosed left paren")
                    return False
                start = self.pos
                self.pos += right
                self.emit("right", start)
                return True
            if not self.inside():
                return False

    def comment(self, start: int, trim: int) -> bool:
        self.pos += trim + 2
        end = self.text.find("*/", self.pos)
        if end < 0:
            self.fail("unclosed comment")
            return False
        self.pos = end + 2
        right = self.at_right()
        if not right:
            self.fail("comment ends before closing delimiter")
            return False
        self.pos += right
        self.line += self.text[start:self.pos].count("\n")
        return True

    def inside(self) -> bool:  # noqa: C901 - one branch per character class, as in Go's lexInsideAction
        start, c = self.pos, self.peek()
        if not c:
            self.fail("unclosed action")
            return False
        self.pos += 1
        if c in _SPACE:
            while self.peek() in _SPACE and self.peek() and not self.at_right():
                self.pos += 1
            self.emit("space", start)
        elif c == "=":
            self.emit("assign", start)
        elif c == ":":
            if self.peek() != "=":
                self.fail("expected :=")
                return False
            self.pos += 1
            self.emit("declare", start)
        elif c == "|":
            self.emit("pipe", start)
        elif c == '"':
            return self.quoted(start, '"', "string", "unterminated quoted string")
        elif c == "'":
            return self.quoted(start, "'", "char", "unterminated character constant")
        elif c == "`":
            end = self.text.find("`", self.pos)
            if end < 0:
                self.fail("unterminated raw quoted string")
                return False
            self.pos = end + 1
            self.emit("raw", start)
        elif c == "$":
            return self.field_or_variable(start, "variable")
        elif c == "." and not ("0" <= self.peek() <= "9" and self.peek()):
            return self.field_or_variable(start, "field")
        elif c in "+-." or "0" <= c <= "9":
            self.pos = start
            return self.number(start)
        elif _alphanumeric(c):
            return self.identifier(start)
        elif c == "(":
            self.parens += 1
            self.emit("lparen", start)
        elif c == ")":
            self.parens -= 1
            if self.parens < 0:
                self.fail("unexpected right paren")
                return False
            self.emit("rparen", start)
        elif c.isascii() and c.isprintable():
            self.emit("item", start)
        else:
            self.fail(f"unrecognized character in action: U+{ord(c):04X}")
            return False
        return True

    def quoted(self, start: int, quote: str, kind: str, unterminated: str) -> bool:
        while True:
            c = self.peek()
            self.pos += 1
            if c == "\\":
                c = self.peek()
                self.pos += 1
                if c and c != "\n":
                    continue
            if not c or c == "\n":
                self.fail(unterminated)
                return False
            if c == quote:
                self.emit(kind, start)
                return True

    def at_terminator(self) -> bool:
        c = self.peek()
        return not c or c in _SPACE or c in ".,|:)(}"

    def bad_character(self) -> bool:
        c = self.peek()
        self.fail(f"bad character U+{ord(c):04X} '{c}'")
        return False

    def field_or_variable(self, start: int, kind: str) -> bool:
        if self.at_terminator():  # "$" or "."
            self.emit("variable" if kind == "variable" else "dot", start)
            return True
        while self.peek() and _alphanumeric(self.peek()):
            self.pos += 1
        if not self.at_terminator():
            return self.bad_character()
        self.emit(kind, start)
        return True

    def identifier(self, start: int) -> bool:
        while self.peek() and _alphanumeric(self.peek()):
            self.pos += 1
        if not self.at_terminator():
            return self.bad_character()
        word = self.text[start:self.pos]
        self.emit(word if word in KEYWORDS else "bool" if word in ("true", "false") else "ident", start)
        return True

    def accept(self, chars: str) -> bool:
        if self.peek() and self.peek() in chars:
            self.pos += 1
            return True
        return False

    def accept_run(self, chars: str) -> None:
        while self.accept(chars):
            pass

    def number(self, start: int) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            for prefix, run in (("xX", "0123456789abcdefABCDEF_"), ("oO", "01234567_"), ("bB", "01_")):
                if self.accept(prefix):
                    digits = run
                    break
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if self.peek() and _alphanumeric(self.peek()):
            self.pos += 1
            self.fail(f"bad number syntax: {self.text[start:self.pos]!r}")
            return False
        self.emit("number", start)
        return True


def lex(text: str) -> list[Token]:
    return _Lexer(text).run()

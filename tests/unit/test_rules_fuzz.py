"""Hostile rules files: whatever the bytes, loading gives the rules or file:line errors, never a crash.

The bulk runs the loader in-process on files mutated from rules/anomaly/ (hypothesis, derandomized); the
worst cases (alias bombs, huge and deep PromQL, deep YAML) also run through `oa-exporter check` in a child
process held to 1 GiB of address space, where a crash or a memory blow-up would show as a failed exit.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oa_exporter.bootstrap import config_store
from oa_exporter.core.domain import RuleSet
from oa_exporter.core.errors import RuleError
from oa_exporter.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [p.read_bytes() for p in sorted((ROOT / "rules" / "anomaly").glob("*.yaml"))]
FUZZ_EXAMPLES = int(__import__("os").environ.get("RULES_FUZZ_EXAMPLES", "10000"))

# fragments that broke the loader before: undecodable bytes, unhashable keys, impossible dates, huge numbers,
# tags, lone surrogates, aliases and merges, deep nesting, long PromQL
TOKENS = [
    b"\xff", b"\x00", b"\x07", b"{{}: 0}", b"[", b"]", b"{", b"}", b"&a ", b"*a", b"<<: *a", b"? ", b": ", b"- ",
    b"\n", b"\t", b"'", b'"', b"2020-02-30", b"!!timestamp 2020-13-01", b"!!binary x", b"!!float x", b"!!int x",
    b"!!python/object:os.system", b"1e400", b"-.inf", b".nan", b"9" * 400, b"99999999999999999999y",
    b'"\\udc80"', b"'\\udc80'", b"~", b"null", b"true", b"0x1F", b"0o17", b"%YAML 1.1\n---\n", b"---\n", b"...\n",
    b"[" * 200, b"{a: " * 50, b"up+" * 300, b"(" * 100, b"sum(" * 70, b"&b [*b]", b"\xef\xbb\xbf", b"\r",
    b"engine: sklearn", b"engine: nope", b"name: Nope", b"params: [1]", b"level: 100", b"step: 0s",
]


def alias_bomb(levels: int, width: int) -> bytes:
    """Each level repeats the one before it `width` times: width**levels values from a few hundred bytes."""
    lines = ["a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    lines.append(f"groups: *a{levels - 1}")
    return "\n".join(lines).encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 4))
        if kind == 0:  # insert a known troublemaker
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == 1:  # random bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 2:  # cut a span
            data[at:at + draw(st.integers(1, 64))] = b""
        elif kind == 3:  # replace the value after a key
            end = data.find(b"\n", at)
            colon = data.rfind(b": ", 0, end if end >= 0 else len(data))
            if colon >= 0:
                data[colon + 2:end if end >= 0 else len(data)] = draw(st.sampled_from(TOKENS))
        else:  # repeat a line
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            line = bytes(data[start:end if end >= 0 else len(data)])
            data[start:start] = (line + b"\n") * draw(st.integers(1, 3))
    return bytes(data)


hostile = st.one_of(
    mutated(),
    st.builds(alias_bomb, st.integers(2, 12), st.integers(2, 12)),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.fixture(scope="module")
def store():
    return config_store(Settings(rules=("unused",)))


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "rules.yaml"


def test_fuzzed_rules_files_load_or_give_located_errors(store, rules_file):
    count = 0

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile)
    def one_file(data: bytes) -> None:
        nonlocal count
        count += 1
        rules_file.write_bytes(data)
        try:
            loaded = store.load_files([rules_file])
        except RuleError as e:
            assert e.problems
            for problem in e.problems:
                assert problem.file == str(rules_file) and problem.line >= 1, str(problem)
                str(problem).encode()  # printable as check prints it
            return
        assert isinstance(loaded, RuleSet)

    one_file()
    assert count >= FUZZ_EXAMPLES


WORST = {
    "alias_bomb.yaml": alias_bomb(9, 9),
    "deep_yaml.yaml": b"groups: " + b"[" * 5000,
    "long_expr.yaml": b"groups:\n- name: g\n  rules:\n  - anomaly: x\n    expr: " + b"+".join([b"up"] * 4200),
    "deep_parens.yaml": b"groups:\n- name: g\n  rules:\n  - anomaly: x\n    expr: " + b"(" * 8200 + b"up" + b")" * 8200,
    "deep_sum.yaml": b"groups:\n- name: g\n  rules:\n  - anomaly: x\n    expr: " + b"sum(" * 5000 + b"up" + b")" * 5000,
    "surrogate.yaml": b'groups:\n- name: g\n  rules:\n  - anomaly: x\n    expr: up\n    labels: {a: "\\udc80"}\n',
    "bad_byte.yaml": b"\xff",
    "unhashable.yaml": b"{{}: 0}",
    "bad_date.yaml": b"a: 2020-02-30",
}


def _one_gib() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_check_refuses_the_worst_files_cleanly_within_1_gib(tmp_path):
    for name, data in WORST.items():
        (tmp_path / name).write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "oa_exporter", "check", str(tmp_path)], capture_output=True,
                          text=True, preexec_fn=_one_gib, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    for name in WORST:
        assert f"{tmp_path / name}:" in done.stderr  # file:line

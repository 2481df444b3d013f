"""Config files against hostile input (issue 10 item 8): alias bombs, huge files, huge echoes."""

from __future__ import annotations

import conceptkit as ck
from conceptkit.config_io import apply_overrides, load_config_file
from conceptkit.errors import ConfigError
from tests.adversarial.tally import expect_error

AREA = "config files"

# Small enough that a loader which expands aliases finishes at once (9**4 strings), so the test
# fails quickly on a loader that accepts aliases; the real bomb (9**9) is refused the same way.
BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
"""


def test_yaml_aliases_are_refused(tmp_path):
    """A YAML alias bomb (or any alias) is refused with the alias and line named."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    expect_error(AREA, "alias bomb (9^4)", lambda: load_config_file(tmp_path / "bomb.yaml"), r"alias \*a at line 3", ConfigError)
    expect_error(AREA, "alias in --set", lambda: apply_overrides({}, ["x=[&a 1, *a]"]), "alias", ConfigError)


def test_huge_or_binary_config_files_are_refused(tmp_path):
    """Over-large and non-UTF-8 config files get one-line errors naming the file and the limit."""
    (tmp_path / "big.yaml").write_text("a: " + "x" * (2 << 20))
    expect_error(AREA, "2 MiB config file", lambda: load_config_file(tmp_path / "big.yaml"), "over the limit of 1048576", ConfigError)
    (tmp_path / "bin.yaml").write_bytes(b"a: \xff\xfe\x00")
    expect_error(AREA, "binary config file", lambda: load_config_file(tmp_path / "bin.yaml"), "not UTF-8", ConfigError)
    (tmp_path / "dir.yaml").mkdir()
    expect_error(AREA, "a directory as config file", lambda: load_config_file(tmp_path / "dir.yaml"), "not a file", ConfigError)


def test_error_messages_do_not_echo_huge_values():
    """A megabyte value in a bad config is echoed shortened (the message stays short)."""

    class Cfg(ck.MethodConfig):
        times: int = 1

    err = expect_error(AREA, "1 MB value echoed in an error", lambda: ck.contract.validate_config(Cfg, {"times": "9" * 10 + "x" * 1_000_000}, "m"),
                       "times", ConfigError)
    assert len(str(err)) < 2500 and "characters omitted" in str(err)


def test_bad_yaml_error_is_one_short_line(tmp_path):
    """A YAML syntax error names the file and line, briefly."""
    (tmp_path / "bad.yaml").write_text("a: [1, 2\nb: " + "y" * 100_000)
    err = expect_error(AREA, "unterminated list", lambda: load_config_file(tmp_path / "bad.yaml"), r"not valid YAML \(line", ConfigError)
    assert len(str(err)) < 1000

"""ANSI parsing: colours (16, 256, truecolour), attributes, resets, and escapes that must vanish."""

from __future__ import annotations

from app.gui.ansi import TRUECOLOR, Run, Style, parse_line, strip_ansi, xterm_rgb


def test_plain_text_is_one_plain_run() -> None:
    assert parse_line("hello world") == (Run("hello world", Style()),)
    assert parse_line("") == ()


def test_sixteen_colours_and_reset() -> None:
    runs = parse_line("\x1b[31mred\x1b[0m plain \x1b[92mbright\x1b[39m default")
    assert runs == (Run("red", Style(fg=1)), Run(" plain ", Style()), Run("bright", Style(fg=10)),
                    Run(" default", Style()))


def test_256_colours_foreground_and_background() -> None:
    (run,) = parse_line("\x1b[38;5;208;48;5;17mx")
    assert run.style.fg == 208 and run.style.bg == 17
    assert xterm_rgb(208) == 0xFF8700
    assert xterm_rgb(232) == 0x080808 and xterm_rgb(255) == 0xEEEEEE


def test_truecolour_semicolon_and_colon_forms() -> None:
    (first,) = parse_line("\x1b[38;2;10;20;30mx")
    assert first.style.fg == TRUECOLOR | 0x0A141E
    (second,) = parse_line("\x1b[48:2::255:128:0mx")
    assert second.style.bg == TRUECOLOR | 0xFF8000


def test_attributes_switch_on_and_off() -> None:
    runs = parse_line("\x1b[1;4mboth\x1b[22mul\x1b[24m none \x1b[3;7mitalic-inverse")
    assert runs[0] == Run("both", Style(bold=True, underline=True))
    assert runs[1] == Run("ul", Style(underline=True))
    assert runs[2] == Run(" none ", Style())
    assert runs[3].style == Style(italic=True, inverse=True)


def test_empty_sgr_resets_and_adjacent_equal_runs_merge() -> None:
    assert parse_line("\x1b[31ma\x1b[31mb\x1b[mc") == (Run("ab", Style(fg=1)), Run("c", Style()))


def test_non_sgr_escapes_are_dropped() -> None:
    text = "\x1b[2K\x1b[1Gdone \x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1b[?25l!"
    assert strip_ansi(text) == "done link !"
    assert "".join(r.text for r in parse_line(text)) == "done link !"


def test_carriage_return_keeps_what_a_terminal_shows() -> None:
    assert strip_ansi("10%\r50%\r100%") == "100%"
    assert strip_ansi("line\r") == "line"
    assert parse_line("a\rb") == (Run("b", Style()),)


def test_truncated_sequences_do_not_leak() -> None:
    assert strip_ansi("tail\x1b") == "tail"
    assert strip_ansi("x\x1b[38;5m y") == "x y"
    (run,) = parse_line("\x1b[38;5mz")
    assert run.text == "z"

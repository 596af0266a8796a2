"""Generate shell completions (bash, zsh, fish) and man pages from the app.

``python -m spkemb.cli.gendocs`` rewrites ``completions/`` and ``man/``; ``--check`` exits 1 when
they are out of date (the test suite runs it, so a changed option cannot ship stale docs).
"""

from __future__ import annotations

import argparse
import filecmp
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHELLS = {"bash": "spkemb.bash", "zsh": "_spkemb", "fish": "spkemb.fish"}
MAN_DATE = "2026-11"  # fixed, so that regenerating is reproducible; bump with releases


def completion_script(shell: str) -> str:
    """Typer's completion script for ``shell`` (it calls back into ``spkemb`` at completion time)."""
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    # Run the installed console script, so the scripts name the program `spkemb`.
    exe = Path(sys.executable).with_name("spkemb")
    out = subprocess.run(
        [str(exe), "--show-completion", shell],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout


EXIT_STATUS = (
    ("0", "Success, also when there was nothing to do (an output already complete)."),
    ("1", "The work failed (e.g. a full disk); an existing output is left untouched."),
    (
        "2",
        "Bad usage or bad input: one line on stderr names the option or the file and the problem, "
        "and nothing is written.",
    ),
    ("130", "Interrupted (Ctrl-C); training writes a checkpoint first and prints the command that resumes."),
)


def _roff(text: str) -> str:
    """``text`` as literal troff: backslashes and hyphens escaped, no line starting a request."""
    lines = text.replace("\\", "\\e").replace("-", "\\-").splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _sections(name: str) -> str:
    """The EXIT STATUS and EXAMPLES sections of ``name``'s man page (``spkemb`` or a subcommand)."""
    from spkemb.cli.examples import EXAMPLES

    out = [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        out += [".TP", code, meaning]
    if EXAMPLES.get(name):
        out.append(".SH EXAMPLES")
        for what, command in EXAMPLES[name]:
            out += [".PP", what, ".PP", ".RS 4", ".nf", _roff(command), ".fi", ".RE"]
    page = "spkemb" if name == "spkemb" else f"spkemb-{name}"
    see = ", ".join(
        f"\\fB{p}\\fP(1)" for p in ["spkemb", *(f"spkemb-{c}" for c in EXAMPLES if c != "spkemb")] if p != page
    )
    out += [".SH SEE ALSO", see]
    return "\n".join(out) + "\n"


def man_page(command: Any, name: str, parent: Any = None) -> tuple[str, str]:
    """(file name, troff text) of one command's man page, laid out by click-man, with EXIT STATUS,
    EXAMPLES (:mod:`spkemb.cli.examples`) and SEE ALSO sections added.

    click-man's own page builder keeps only parameters that are ``click.Option`` instances, and
    Typer's parameters come from the click that Typer vendors, so it would drop every option: the
    page is filled here from each parameter's help record instead. The NAME line is the first
    paragraph of the command's help, whole (click-man's short help is cut at 45 characters).
    """
    from click_man.man import ManPage

    from spkemb import __version__

    ctx = command.context_class(command, info_name=name, parent=parent)
    page = ManPage(ctx.command_path)
    page.version = __version__
    page.date = MAN_DATE
    help_text = inspect.cleandoc(command.help or "")
    page.short_help = " ".join(help_text.split("\n\n")[0].split()).rstrip(".")
    page.description = help_text
    page.synopsis = " ".join(command.collect_usage_pieces(ctx))
    page.options = [
        rec for p in command.get_params(ctx) if not getattr(p, "hidden", False) and (rec := p.get_help_record(ctx))
    ]
    subcommands = getattr(command, "commands", {})
    if subcommands:
        page.commands = [(k, v.get_short_help_str(limit=200)) for k, v in subcommands.items() if not v.hidden]
    return f"{ctx.command_path.replace(' ', '-')}.1", str(page) + _sections(name)


def write_all(root: Path) -> None:
    import typer

    from spkemb.cli.app import app

    (root / "completions").mkdir(parents=True, exist_ok=True)
    for shell, name in SHELLS.items():
        (root / "completions" / name).write_text(completion_script(shell))
    man = root / "man"
    man.mkdir(parents=True, exist_ok=True)
    for old in man.glob("*.1"):
        old.unlink()
    top = typer.main.get_command(app)
    name, text = man_page(top, "spkemb")
    (man / name).write_text(text)
    parent = top.context_class(top, info_name="spkemb")
    for sub_name, sub in getattr(top, "commands", {}).items():
        if not sub.hidden:
            name, text = man_page(sub, sub_name, parent)
            (man / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=Path(__file__).resolve().parents[2], type=Path)
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if stale")
    a = ap.parse_args(argv)
    if not a.check:
        write_all(a.root)
        print(f"wrote {a.root / 'completions'} and {a.root / 'man'}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_all(Path(tmp))
        stale = []
        for sub in ("completions", "man"):
            cmp = filecmp.dircmp(Path(tmp) / sub, a.root / sub)
            stale += [f"{sub}/{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files]
            _, mismatch, errors = filecmp.cmpfiles(Path(tmp) / sub, a.root / sub, cmp.common_files, shallow=False)
            stale += [f"{sub}/{n}" for n in mismatch + errors if f"{sub}/{n}" not in stale]
    if stale:
        print("out of date (run `make docs`): " + ", ".join(sorted(set(stale))), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

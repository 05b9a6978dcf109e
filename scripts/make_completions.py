"""Regenerate the shell completion scripts in completions/ from the `lwm` command tree.

    python scripts/make_completions.py          # rewrite completions/lwm.bash, _lwm, lwm.fish
    python scripts/make_completions.py --check  # exit 1 if they are out of date (for CI)

Install: bash `source completions/lwm.bash` (or copy it to /etc/bash_completion.d/lwm); zsh: put `_lwm`
in a directory on $fpath; fish: copy `lwm.fish` to ~/.config/fish/completions/. `lwm --completion SHELL`
prints the same scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILES = {"bash": "lwm.bash", "zsh": "_lwm", "fish": "lwm.fish"}


def render() -> dict[Path, str]:
    import typer

    from lwm_cli._completion import script
    from lwm_cli.main import app

    command = typer.main.get_command(app)
    return {ROOT / "completions" / name: script(command, shell) for shell, name in FILES.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if check and stale:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + "; run python scripts/make_completions.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

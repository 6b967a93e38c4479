"""Print, one per line, the installed part files whose concatenation is the Qwen2.5-Coder pair stream.

Usage: python3 scripts/qwen_pair_parts.py scripts/qwen_xfer_manifest.txt

The manifest's `file` lines name the pair in stream order (0.5B draft, then 1.5B target) with the byte
size and sha256 dynaspec.models.zoo records for the zoo models `qwen2.5-coder-0.5b-instruct` and
`qwen2.5-coder-1.5b-instruct`. This checks the manifest against the zoo, hashes the installed parts of
each model (zoo.assemble, which raises with the reinstall command when they differ), and prints the part
paths so a shell can `cat` them into one stream. Exit status 1 with a message on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dynaspec.models import zoo

PAIR = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")


def manifest_files(path: Path) -> list[tuple[str, int, str]]:
    """The (name, bytes, sha256) of the manifest's `file` lines, in order; ValueError when malformed."""
    files = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "file":
            continue
        if len(fields) != 4 or not fields[2].isdigit() or len(fields[3]) != 64:
            raise ValueError(f"{path}:{number}: expected 'file NAME BYTES SHA256', got {line!r}")
        files.append((fields[1], int(fields[2]), fields[3]))
    return files


def pair_parts(manifest: Path) -> list[Path]:
    """Installed part files of the pair in stream order, after checking the manifest and the parts' bytes."""
    files = manifest_files(manifest)
    if len(files) != len(PAIR):
        raise ValueError(f"{manifest} names {len(files)} files; expected {len(PAIR)} (0.5B, then 1.5B)")
    parts: list[Path] = []
    for (name, size, sha256), zoo_name in zip(files, PAIR):
        model = zoo.get_zoo_model(zoo_name)
        if (size, sha256) != (model.size, model.sha256):
            raise ValueError(
                f"{manifest}: {name} says {size} bytes, sha256 {sha256}; the zoo's {zoo_name} is "
                f"{model.size} bytes, sha256 {model.sha256}"
            )
        model_parts = zoo.installed_files(model)  # ZooNotInstalledError (a ValueError) names the pip command
        zoo.assemble(model, model_parts)  # RuntimeError when the installed bytes differ
        parts += model_parts
    return parts


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        parts = pair_parts(Path(argv[0]))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

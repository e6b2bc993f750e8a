"""The images the containers start from, read from the Dockerfile and the compose file.

Everything compose pulls rather than builds: each `FROM` of the Dockerfile (stage names
excluded) and each service's `image` that has no `build`, every profile included. `.ci/run`
hands them to `engine.sh images`, which makes local stand-ins where no registry is reachable:

    python -m harness.images
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def base_images(root: Path = ROOT) -> list[str]:
    found: list[str] = []
    stages: set[str] = set()
    for line in (root / "Dockerfile").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            if words[1] not in stages:
                found.append(words[1])
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    found += [s["image"] for s in services.values() if "image" in s and "build" not in s]
    return list(dict.fromkeys(found))


if __name__ == "__main__":
    print("\n".join(base_images()))

"""Write .dvc/plots/offline.html: DVC's plot page with Vega, Vega-Lite and vega-embed inlined.

    python scripts/offline_plots_template.py      # scripts/setup.sh runs it after `npm ci --prefix tools/plots`

`dvc plots show` writes a page whose scripts come from a CDN (dvc_render's VegaRenderer.SCRIPTS),
which renders blank without internet. DVC takes an HTML template instead (`plots.html_template`
in .dvc/config, relative to .dvc/); this one has DVC's page layout and the three libraries from
npm (tools/plots, pinned by its package-lock.json) inlined, so the page works offline wherever it
is written (-o). It has no `{scripts}` placeholder, so DVC adds no CDN tags.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "tools" / "plots" / "node_modules"
LIBRARIES = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
OUT = ROOT / ".dvc" / "plots" / "offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> int:
    scripts = []
    for rel in LIBRARIES:
        path = MODULES / rel
        if not path.is_file():
            print(f"{path} is missing: run `npm ci --prefix tools/plots` (scripts/setup.sh does)", file=sys.stderr)
            return 1
        code = path.read_text(encoding="utf-8")
        for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
            if placeholder in code:  # DVC fills placeholders by text replacement; HTML ends a script at </script
                print(f"{path} contains {placeholder!r}: cannot inline it", file=sys.stderr)
                return 1
        scripts.append(f"    <script>/* {rel} (npm) */\n{code}\n    </script>")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(PAGE % "\n".join(scripts), encoding="utf-8")
    print(f"offline plots template -> {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

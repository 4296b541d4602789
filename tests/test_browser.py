"""The probing notebook in a real browser: JupyterLab in headless Chromium runs 09_interpret (SMOKE) and every
explorer must render its controls, an explanation that wraps between words, and non-blank figures; a control change
must redraw. `.ci/run` installs Debian's chromium; the test skips, saying why, only where it is not installed."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from browser import Page, chromium, chromium_path, jupyter_lab, wait_for

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "09_interpret.ipynb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("browser"),
    pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed and could not be here "
                       "(.ci/run installs it: apt-get install -y chromium); the browser test needs a real browser"),
]

# The notebook's panel, found by its path: in headless Chromium the page never has focus, so the shell's
# `currentWidget` (which follows focus) can stay null.
NOTEBOOK_JS = ("window.jupyterapp && [...window.jupyterapp.shell.widgets('main')]"
               f".find(w => w.context && w.context.path === '{NOTEBOOK.name}')")
STATE_JS = f"""(() => {{
  const w = {NOTEBOOK_JS};
  if (!w || !w.content || !w.sessionContext || !w.sessionContext.session) return null;
  const kernel = w.sessionContext.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  return {{kernel: kernel ? kernel.status : null, total: cells.length,
          done: cells.filter(c => c.model.executionCount !== null).length,
          running: cells.filter(c => (c.promptNode && c.promptNode.textContent || '').includes('*')).length}};
}})()"""
ERRORS_JS = f"""(() => {{
  const w = {NOTEBOOK_JS};
  return w.content.widgets.map((c, i) => [i, c.model.type === 'code' ? c.model.outputs.toJSON() : []])
    .map(([i, outs]) => [i, outs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)])
    .filter(([i, errs]) => errs.length);
}})()"""
EXPLORERS_JS = f"""(() => {{
  const w = {NOTEBOOK_JS};
  return w.content.widgets.filter(c => (c.model.getMetadata('tags') || []).includes('interactive')).map(c => {{
    const n = c.node, note = n.querySelector('.mm1lab-note');
    return {{source: c.model.sharedModel.getSource().split('\\n').pop(),
            controls: n.querySelectorAll('.widget-dropdown, .widget-slider, .widget-toggle-buttons').length,
            images: [...n.querySelectorAll('.widget-output img')].map(i => i.src),
            note_word_break: note ? getComputedStyle(note).wordBreak : null,
            text: n.innerText}};
  }});
}})()"""


def smoke_copy(root: Path) -> Path:
    """09_interpret with SMOKE = True, in a folder JupyterLab serves."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace("SMOKE = False", "SMOKE = True").replace('RUN_DIR = "."', f'RUN_DIR = "{root}"')
    path = root / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


# A figure counts as drawn above these: an empty axes with a colour bar covers 2.6% of its pixels, while the
# sparsest real figure here, the untrained model's logit-lens table (pale cells and their words), covers 4.5%.
MIN_SPREAD, MIN_COVERED = 10, 0.035


def non_blank(png: bytes) -> tuple[float, float]:
    """(grey-level standard deviation, share of pixels that are not the background colour) of a PNG."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    return float(pixels.mean(-1).std()), float((np.abs(pixels - background).sum(-1) > 30).mean())


def test_the_probing_notebook_renders_its_explorers_in_jupyterlab(tmp_path):
    from jupyter_client.kernelspec import find_kernel_specs

    assert "mm1lab" in find_kernel_specs(), "no Jupyter kernel named mm1lab: run `make setup` first"
    root = tmp_path / "root"
    root.mkdir()
    smoke_copy(root)
    timings, t0 = {}, time.monotonic()
    with jupyter_lab(root, tmp_path / "jupyter") as (base, token), chromium(tmp_path / "profile") as devtools:
        timings["servers up"] = time.monotonic() - t0
        page = Page(devtools)
        try:
            page.call("Page.enable")
            page.call("Emulation.setFocusEmulationEnabled", enabled=True)   # focus-driven commands work headless
            page.call("Page.navigate", url=f"{base}/lab/tree/{NOTEBOOK.name}?token={token}&reset")
            wait_for(lambda: (page.js(STATE_JS) or {}).get("kernel") == "idle", timeout=120,
                     what="the notebook to open with an idle mm1lab kernel")
            timings["notebook open"] = time.monotonic() - t0
            # Run All acts on the notebook that has focus: activate ours first.
            page.js(f"(() => {{ window.jupyterapp.shell.activateById(({NOTEBOOK_JS}).id); return true; }})()")
            time.sleep(1)
            page.js("window.jupyterapp.commands.execute('notebook:run-all-cells'), true")

            def finished():
                state = page.js(STATE_JS)
                if page.js(ERRORS_JS):
                    return "error"
                return state["kernel"] == "idle" and state["done"] == state["total"] and not state["running"]
            wait_for(finished, timeout=300, what="every cell to run", every=0.5)
            errors = page.js(ERRORS_JS)
            assert not errors, f"cells raised in JupyterLab: {errors}"
            timings["all cells run"] = time.monotonic() - t0

            def rendered():
                found = page.js(EXPLORERS_JS)
                return found if found and all(e["images"] for e in found) else None
            explorers = wait_for(rendered, timeout=60, what="every explorer to draw an image")
            timings["widgets rendered"] = time.monotonic() - t0
            assert len(explorers) == 5, [e["source"] for e in explorers]
            for e in explorers:
                name = e["source"]
                assert e["controls"] >= 2, f"{name}: {e['controls']} controls rendered"
                assert "Loading widget" not in e["text"] and "Error displaying widget" not in e["text"], name
                assert "Could not draw" not in e["text"], f"{name}: {e['text'][:2000]}"
                assert e["note_word_break"] == "normal", f"{name}: explanation wraps with {e['note_word_break']!r}"
                for src in e["images"]:
                    assert src.startswith("data:image/png;base64,"), name
                    spread, covered = non_blank(base64.b64decode(src.split(",", 1)[1]))
                    assert spread > MIN_SPREAD and covered > MIN_COVERED, \
                        f"{name}: a blank figure (std {spread:.1f}, {covered:.1%} of pixels drawn)"
            redraw_ms = change_head_and_time_the_redraw(page)
            timings["redraw after a head change (ms)"] = redraw_ms
            shots = save_screenshots(page, tmp_path)
            for shot in shots:
                spread, covered = non_blank(shot.read_bytes())
                assert spread > MIN_SPREAD and covered > MIN_COVERED, f"{shot.name} is blank"
        finally:
            page.close()
    timings["total"] = time.monotonic() - t0
    print("browser test timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def change_head_and_time_the_redraw(page: Page) -> float:
    """Pick another head in the attention explorer as a user would (select an option, fire `change`); the figure
    must change. Returns the time from the change event to the new image, in ms."""
    page.js(f"""(() => {{
      const w = {NOTEBOOK_JS};
      const cell = w.content.widgets.filter(c => (c.model.getMetadata('tags') || []).includes('interactive'))[0];
      const dropdown = [...cell.node.querySelectorAll('.widget-dropdown')]
        .find(d => d.querySelector('label').textContent.trim() === 'head');
      const select = dropdown.querySelector('select');
      const output = cell.node.querySelector('.widget-output');
      window.__before = output.querySelector('img').src;
      window.__redraw = null;
      const start = performance.now();
      new MutationObserver((_, observer) => {{
        const img = output.querySelector('img');
        if (img && img.src !== window.__before) {{
          window.__redraw = performance.now() - start;
          observer.disconnect();
        }}
      }}).observe(output, {{subtree: true, childList: true, attributes: true}});
      select.selectedIndex = 2;
      select.dispatchEvent(new Event('change', {{bubbles: true}}));
    }})()""")
    return wait_for(lambda: page.js("window.__redraw"), timeout=30, what="the explorer to redraw after a change")


def save_screenshots(page: Page, folder: Path) -> list[Path]:
    """A screenshot of each explorer (scrolled into view); copied to $MM1LAB_BROWSER_SHOTS when set."""
    count = page.js(f"""(() => {{
      const w = {NOTEBOOK_JS};
      return w.content.widgets.filter(c => (c.model.getMetadata('tags') || []).includes('interactive')).length;
    }})()""")
    shots = []
    for i in range(count):
        clip = page.js(f"""(() => {{
          const w = {NOTEBOOK_JS};
          const cell = w.content.widgets.filter(c => (c.model.getMetadata('tags') || []).includes('interactive'))[{i}];
          const box = cell.node.querySelector('.jp-OutputArea') || cell.node;
          box.scrollIntoView();
          const r = box.getBoundingClientRect();
          return {{x: r.x, y: r.y, width: r.width, height: Math.min(r.height, window.innerHeight - r.y)}};
        }})()""")
        time.sleep(0.3)                                      # let the scroll paint
        shot = folder / f"explorer-{i}.png"
        shot.write_bytes(page.screenshot(clip))
        shots.append(shot)
    if os.environ.get("MM1LAB_BROWSER_SHOTS"):
        target = Path(os.environ["MM1LAB_BROWSER_SHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, target / shot.name)
    return shots

"""tools/notebooks/capgen_walkthrough.ipynb: stored without outputs, and run end to end on small sizes
(its parameters overridden by a cell after the parameters cell, as papermill does) by this Python's
ipykernel, in a temporary folder."""

import json
import os
import sys

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "tools", "notebooks", "capgen_walkthrough.ipynb")
SMALL = """
IMAGES = 40
SYNTH_SIZE = (64, 48)
IMAGE_SIZE = 32
EPOCHS = 1
BATCH_SIZE = 8
DIMS = 32
QUERIES = ["a red circle", "a blue zorg"]
"""
CELL_TIMEOUT_S = 180


def read():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_stored_without_outputs_and_with_one_parameters_cell():
    code = [c for c in read().cells if c.cell_type == "code"]
    assert [(c.outputs, c.execution_count) for c in code] == [([], None)] * len(code)
    assert [c.id for c in code if "parameters" in c.metadata.get("tags", [])] == ["parameters"] == [code[0].id]


def with_small_parameters(nb):
    """The notebook with SMALL run right after its parameters cell."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell(SMALL.strip(), id="injected-parameters")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)
    return nb


def use_this_python(folder, monkeypatch):
    """The python3 kernel is ipykernel on this very interpreter, importing this tree's capgen."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(folder))  # searched before any other kernel folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def outputs(nb, cell_id):
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    images = sum("image/png" in o.get("data", {}) for o in cell.outputs)
    return text, images


def test_runs_end_to_end_on_small_sizes(tmp_path, monkeypatch):
    use_this_python(tmp_path / "jupyter", monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    nb = with_small_parameters(read())
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError at the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert outputs(nb, "pip") == ("", 0)  # capgen is importable here: nothing installed
    text, _ = outputs(nb, "data")
    assert text.startswith("capgen-walkthrough/data: 32 train + 8 val images, ")
    text, _ = outputs(nb, "shards")
    assert (
        "capgen-walkthrough/shards/train: 32 images, " in text and "capgen-walkthrough/shards/val: 8 images, " in text
    )
    text, images = outputs(nb, "train")
    assert text.startswith("1 epochs, 4 steps, best val BLEU-4 ") and images == 1  # the training curve
    text, _ = outputs(nb, "scores")
    assert text.startswith("8 held-out images, beam 3, text preset coco\n") and "\nBleu_4   " in text
    assert "\nCIDEr    " in text and "attribute accuracy: colour " in text
    text, images = outputs(nb, "caption")
    assert len(text.splitlines()) == 3 and images == 1  # the top 3 beams, the attention figure
    text, images = outputs(nb, "search")
    assert text.startswith("a red circle\n  1. ") and "a blue zorg (unknown words: zorg)\n" in text and images == 2
    run = work / "capgen-walkthrough"
    assert {"data", "shards", "run", "results_val.json", "attention.png"} <= set(os.listdir(run))
